// Command report regenerates the results section of docs/benchmarks.md
// and its SVG plots from a benchmark results file, so the doc always
// shows what the data says:
//
//	go run ./benchmarks/report [-in benchmarks/results/latest.json] [-doc docs/benchmarks.md] [-img docs/img/bench] [-check]
//
// It replaces the lines from "<!-- bench:begin ..." to "<!-- bench:end -->"
// in the doc (appending the block at the end when the doc has no
// markers) and writes the plots into the image directory. Text outside
// the markers is never changed. With -check it writes nothing and exits
// with status 1 when the doc's block or a plot differs from what would be
// generated (for CI); other errors exit with status 2.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("report", flag.ContinueOnError)
	fl.SetOutput(stderr)
	in := fl.String("in", "benchmarks/results/latest.json", "benchmark results (JSON)")
	doc := fl.String("doc", "docs/benchmarks.md", "markdown doc whose generated block is replaced")
	img := fl.String("img", "docs/img/bench", "directory for the SVG plots")
	check := fl.Bool("check", false, "write nothing; exit 1 if the doc or a plot is not what would be generated")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "report: unexpected arguments %q\n", fl.Args())
		return 2
	}
	stale, err := regenerate(options{In: *in, Doc: *doc, Img: *img}, *check, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "report: %v\n", err)
		return 2
	}
	if len(stale) > 0 {
		for _, s := range stale {
			fmt.Fprintf(stderr, "report: %s\n", s)
		}
		fmt.Fprintf(stderr, "report: generated output is stale; run: go run ./benchmarks/report -in %s -doc %s -img %s\n", *in, *doc, *img)
		return 1
	}
	return 0
}

// regenerate generates the block and plots from o.In. With check it
// returns what differs from the files on disk and writes nothing;
// otherwise it writes what changed.
func regenerate(o options, check bool, log io.Writer) (stale []string, err error) {
	res, err := loadResults(o.In)
	if err != nil {
		return nil, err
	}
	out, err := generate(res, o)
	if err != nil {
		return nil, err
	}
	old, err := os.ReadFile(o.Doc)
	if err != nil {
		return nil, err
	}
	doc, err := replaceBlock(old, out.Block)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Doc, err)
	}
	var changed []outFile
	for _, f := range out.Files {
		p := filepath.Join(o.Img, f.Name)
		cur, err := os.ReadFile(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			stale = append(stale, p+": missing")
			changed = append(changed, f)
		case err != nil:
			return nil, err
		case !bytes.Equal(cur, f.Data):
			stale = append(stale, p+": differs")
			changed = append(changed, f)
		}
	}
	docChanged := !bytes.Equal(old, doc)
	if docChanged {
		stale = append([]string{o.Doc + ": generated block differs"}, stale...)
	}
	if check {
		return stale, nil
	}
	if len(changed) > 0 {
		if err := os.MkdirAll(o.Img, 0o755); err != nil {
			return nil, err
		}
	}
	for _, f := range changed {
		p := filepath.Join(o.Img, f.Name)
		if err := os.WriteFile(p, f.Data, 0o644); err != nil {
			return nil, err
		}
		fmt.Fprintf(log, "wrote %s\n", p)
	}
	if docChanged {
		mode := fs.FileMode(0o644)
		if st, err := os.Stat(o.Doc); err == nil {
			mode = st.Mode().Perm()
		}
		if err := os.WriteFile(o.Doc, doc, mode); err != nil {
			return nil, err
		}
		fmt.Fprintf(log, "wrote %s\n", o.Doc)
	}
	if !docChanged && len(changed) == 0 {
		fmt.Fprintf(log, "%s and %d plots are up to date\n", o.Doc, len(out.Files))
	}
	return nil, nil
}
