package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// replaceBlock returns doc with the lines from the begin marker (a line
// starting with "<!-- bench:begin") to the end marker line replaced by
// block (which holds its own markers). Every byte outside those lines is
// kept. Without markers, block is appended at the end, after a blank
// line. More than one begin or end marker, or one without the other, is
// an error: the doc needs a human.
func replaceBlock(doc []byte, block string) ([]byte, error) {
	type span struct{ start, end int } // the line, without its newline
	var begins, ends []span
	for off := 0; off < len(doc); {
		end := bytes.IndexByte(doc[off:], '\n')
		next := off + end + 1
		if end < 0 {
			end = len(doc) - off
			next = len(doc)
		}
		line := string(doc[off : off+end])
		switch {
		case strings.HasPrefix(line, beginMarkerPrefix):
			begins = append(begins, span{off, off + end})
		case strings.TrimRight(line, " \t\r") == endMarker:
			ends = append(ends, span{off, off + end})
		}
		off = next
	}
	switch {
	case len(begins) == 0 && len(ends) == 0:
		out := append([]byte(nil), doc...)
		if len(out) > 0 {
			if out[len(out)-1] != '\n' {
				out = append(out, '\n')
			}
			out = append(out, '\n')
		}
		return append(append(out, block...), '\n'), nil
	case len(begins) != 1 || len(ends) != 1:
		return nil, fmt.Errorf("doc has %d begin and %d end markers; want exactly one of each (or none)", len(begins), len(ends))
	case ends[0].start < begins[0].end:
		return nil, errors.New("doc's end marker comes before its begin marker")
	}
	var out []byte
	out = append(out, doc[:begins[0].start]...)
	out = append(out, block...)
	out = append(out, doc[ends[0].end:]...)
	return out, nil
}
