package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"
)

// The walk visits each node once per use (an aliased node once per alias).
// Its budget, 4 visits per input byte but at least 100 000 and at most
// 4 Mi, keeps a small file full of nested aliases ("billion laughs") from
// stalling the proxy (the worst case costs well under a second), while a
// real configuration, aliases and all, stays far below it: 4 Mi visits
// is some 100 000 workloads.
const (
	visitsPerByte = 4
	minVisits     = 100_000
	maxVisits     = 4 << 20
	// maxErrors: beyond this many errors Parse stops and says so.
	maxErrors = 1000
)

// decoder walks a yaml.Node tree, collecting every error with its line.
type decoder struct {
	file      string
	errs      []*FieldError
	visits    int
	maxVisits int
	fatal     bool // walking stopped (budget spent)
	truncated bool // walking stopped (too many errors)
}

func (d *decoder) add(n *yaml.Node, path string, kind error, cause error, format string, args ...any) {
	if len(d.errs) >= maxErrors {
		d.fatal, d.truncated = true, true
		return
	}
	e := &FieldError{File: d.file, Path: path, Msg: fmt.Sprintf(format, args...), Kind: kind, Err: cause}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	d.errs = append(d.errs, e)
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML parses data as exactly one YAML document and returns its root
// node; nil with d.errs set when it cannot.
func (d *decoder) parseYAML(data []byte) (root *yaml.Node) {
	defer func() {
		// yaml.v3 is believed not to panic on any input (the fuzz test
		// keeps checking), but a configuration file must never take the
		// proxy down.
		if r := recover(); r != nil {
			d.add(nil, "", ErrSyntax, nil, "YAML parser failure: %v", r)
			root = nil
		}
	}()
	d.maxVisits = min(max(minVisits, visitsPerByte*len(data)), maxVisits)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.add(nil, "", ErrSyntax, nil, "file is empty (write {} for a configuration without objects)")
			return nil
		}
		d.syntax(err)
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		d.syntax(err)
		return nil
	default:
		d.add(&extra, "", ErrSyntax, nil, "a second YAML document starts here; the file must hold exactly one")
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		d.add(nil, "", ErrSyntax, nil, "file is empty (write {} for a configuration without objects)")
		return nil
	}
	root = doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		d.add(root, "", ErrSyntax, nil, "file is empty (write {} for a configuration without objects)")
		return nil
	}
	return root
}

func (d *decoder) syntax(err error) {
	msg := err.Error()
	e := &FieldError{File: d.file, Kind: ErrSyntax, Err: err}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	e.Msg = "YAML syntax error: " + msg
	d.errs = append(d.errs, e)
}

// resolve follows aliases and counts the work done. It returns nil once the
// budget is spent.
func (d *decoder) resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		d.visits++
		n = n.Alias
	}
	d.visits++
	if d.visits > d.maxVisits {
		if !d.fatal {
			d.fatal = true
			d.add(n, "", ErrSyntax, nil, "document too large once aliases are expanded")
		}
		return nil
	}
	return n
}

// describe names the YAML type of n for error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return fmt.Sprintf("the string %s", quoteShort(n.Value))
		case "!!int":
			return "the integer " + short(n.Value)
		case "!!float":
			return "the number " + short(n.Value)
		case "!!bool":
			return "the boolean " + short(n.Value)
		case "!!null":
			return "null"
		case "!!timestamp":
			return "the timestamp " + short(n.Value)
		case "!!binary":
			return "binary data"
		}
		return "a value tagged " + short(n.Tag)
	}
	return "an unexpected YAML node"
}

// short shortens a value for a message; one that is not plain printable
// text (explicit tags allow any text, newlines included) is quoted so that
// every error stays on one line.
func short(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsGraphic(r) || r == ' ' }) >= 0 {
		return quoteShort(s)
	}
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func quoteShort(s string) string {
	if len(s) > 40 {
		return strconv.Quote(s[:40]) + "..."
	}
	return strconv.Quote(s)
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// key renders a map key as a path element: ".name" or `["odd key"]`.
func key(k string) string {
	if k != "" && strings.IndexFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) < 0 {
		return "." + k
	}
	return "[" + strconv.Quote(k) + "]"
}

func join(path, k string) string {
	if path == "" {
		return strings.TrimPrefix(key(k), ".")
	}
	return path + key(k)
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// entry is one key of a mapping.
type entry struct {
	key   *yaml.Node
	value *yaml.Node // alias resolved; nil when the budget ran out
}

// fields reads a mapping node with the given known keys. It reports
// unknown keys (with a hint from hints, or a did-you-mean), duplicate keys,
// non-string keys and merge keys, and returns the known keys' entries.
// A value that is not a mapping is reported and yields nil, ok=false; so
// does null, unless nullOK.
func (d *decoder) fields(n *yaml.Node, path string, known []string, hints map[string]string) (map[string]entry, bool) {
	if n.Kind != yaml.MappingNode {
		d.add(n, path, ErrType, nil, "expected a mapping, got %s", describe(n))
		return nil, false
	}
	out := make(map[string]entry, len(n.Content)/2)
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content) && !d.fatal; i += 2 {
		k := d.resolve(n.Content[i])
		if k == nil {
			return out, false
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			if k.ShortTag() == "!!merge" {
				d.add(k, path, ErrUnknownField, nil, "merge keys (<<) are not supported; repeat the fields or use an alias for the whole value")
			} else {
				d.add(k, path, ErrType, nil, "field names must be strings, got %s", describe(k))
			}
			continue
		}
		name := k.Value
		if first, dup := seen[name]; dup {
			d.add(k, join(path, name), ErrDuplicate, nil, "field is set twice (first at line %d)", first)
			continue
		}
		seen[name] = k.Line
		if !slices.Contains(known, name) {
			msg := fmt.Sprintf("unknown field %q", name)
			if h, ok := hints[name]; ok {
				msg += " (" + h + ")"
			} else if s := suggest(name, known); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			} else {
				msg += fmt.Sprintf(" (known fields: %s)", strings.Join(known, ", "))
			}
			d.add(k, path, ErrUnknownField, nil, "%s", msg)
			continue
		}
		v := d.resolve(n.Content[i+1])
		if v == nil {
			return out, false
		}
		out[name] = entry{key: k, value: v}
	}
	return out, true
}

// suggest finds a known name equal to name but for case, '-' or '_'.
func suggest(name string, known []string) string {
	norm := func(s string) string {
		return strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(s))
	}
	for _, k := range known {
		if norm(k) == norm(name) {
			return k
		}
	}
	return ""
}

// present returns the entry for name when it is set to something other
// than null.
func present(m map[string]entry, name string) (entry, bool) {
	e, ok := m[name]
	if !ok || e.value == nil || isNull(e.value) {
		return entry{}, false
	}
	return e, true
}

// str reads a string field. A missing or null field yields "", false
// (reported when required). An empty required string is reported too.
func (d *decoder) str(parent *yaml.Node, m map[string]entry, path, name string, required bool) (string, *yaml.Node, bool) {
	e, ok := present(m, name)
	p := join(path, name)
	if !ok {
		if required {
			d.add(parent, p, ErrRequired, nil, "required field is missing")
		}
		return "", parent, false
	}
	s, ok := d.scalarString(e.value, p)
	if !ok {
		return "", e.value, false
	}
	if s == "" && required {
		d.add(e.value, p, ErrRequired, nil, "must not be empty")
		return "", e.value, false
	}
	return s, e.value, true
}

// scalarString checks that n is a string scalar.
func (d *decoder) scalarString(n *yaml.Node, path string) (string, bool) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		return n.Value, true
	}
	msg := fmt.Sprintf("expected a string, got %s", describe(n))
	if n.Kind == yaml.ScalarNode && n.ShortTag() != "!!null" {
		msg += fmt.Sprintf(" (quote it: %s)", quoteShort(n.Value))
	}
	d.add(n, path, ErrType, nil, "%s", msg)
	return "", false
}

// boolean reads an optional boolean field.
func (d *decoder) boolean(m map[string]entry, path, name string, def bool) bool {
	e, ok := present(m, name)
	if !ok {
		return def
	}
	if e.value.Kind != yaml.ScalarNode || e.value.ShortTag() != "!!bool" {
		d.add(e.value, join(path, name), ErrType, nil, "expected a boolean (true or false), got %s", describe(e.value))
		return def
	}
	var b bool
	if err := e.value.Decode(&b); err != nil {
		d.add(e.value, join(path, name), ErrType, err, "expected a boolean (true or false), got %s", describe(e.value))
		return def
	}
	return b
}

// port reads a port number (1-65535) from n.
func (d *decoder) port(n *yaml.Node, path string) (uint16, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		msg := fmt.Sprintf("expected a port number (an integer 1-65535), got %s", describe(n))
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
			if _, err := strconv.ParseUint(n.Value, 10, 16); err == nil {
				msg += " (write it without quotes)"
			}
		}
		d.add(n, path, ErrType, nil, "%s", msg)
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		// An integer too large for int64, or text explicitly tagged !!int.
		d.add(n, path, ErrInvalidValue, err, "port %s is out of range (want 1-65535)", short(n.Value))
		return 0, false
	}
	if v < 1 || v > math.MaxUint16 {
		d.add(n, path, ErrInvalidValue, nil, "port %d is out of range (want 1-65535)", v)
		return 0, false
	}
	return uint16(v), true
}

// list reads an optional list field and calls item for each element
// (alias-resolved). A missing or null list is not an error.
func (d *decoder) list(m map[string]entry, path, name string, item func(n *yaml.Node, path string)) (*yaml.Node, bool) {
	e, ok := present(m, name)
	if !ok {
		return nil, false
	}
	p := join(path, name)
	if e.value.Kind != yaml.SequenceNode {
		d.add(e.value, p, ErrType, nil, "expected a list, got %s", describe(e.value))
		return e.value, false
	}
	for i, c := range e.value.Content {
		if d.fatal {
			break
		}
		if c = d.resolve(c); c == nil {
			break
		}
		item(c, index(p, i))
	}
	return e.value, true
}

// strList reads an optional list of strings, checking each with check.
func (d *decoder) strList(m map[string]entry, path, name string, check func(string) error) []string {
	var out []string
	d.list(m, path, name, func(n *yaml.Node, p string) {
		s, ok := d.scalarString(n, p)
		if !ok {
			return
		}
		if check != nil {
			if err := check(s); err != nil {
				d.add(n, p, ErrInvalidValue, err, "%s", trimSentinel(err))
				return
			}
		}
		out = append(out, s)
	})
	return out
}

// addr parses one IP address value.
func (d *decoder) addr(n *yaml.Node, path string) (netip.Addr, bool) {
	s, ok := d.scalarString(n, path)
	if !ok {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		d.add(n, path, ErrInvalidValue, err, "%s is not an IP address", quoteShort(s))
		return netip.Addr{}, false
	case ip.Zone() != "":
		d.add(n, path, ErrInvalidValue, nil, "%s: an address with a zone is not supported", quoteShort(s))
		return netip.Addr{}, false
	case ip.Unmap().IsUnspecified():
		d.add(n, path, ErrInvalidValue, nil, "%s is the unspecified address", quoteShort(s))
		return netip.Addr{}, false
	case ip.IsMulticast():
		d.add(n, path, ErrInvalidValue, nil, "%s is a multicast address", quoteShort(s))
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// prefix parses an IP block: a CIDR prefix or a single address.
func (d *decoder) prefix(n *yaml.Node, path string) (netip.Prefix, bool) {
	s, ok := d.scalarString(n, path)
	if !ok {
		return netip.Prefix{}, false
	}
	if !strings.Contains(s, "/") {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			d.add(n, path, ErrInvalidValue, err, "%s is not an IP address or CIDR prefix", quoteShort(s))
			return netip.Prefix{}, false
		}
		ip = ip.Unmap()
		return netip.PrefixFrom(ip, ip.BitLen()), true
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		d.add(n, path, ErrInvalidValue, err, "%s is not a CIDR prefix", quoteShort(s))
		return netip.Prefix{}, false
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), true
}

// labels reads an optional map of Kubernetes labels (or a selector).
func (d *decoder) labels(m map[string]entry, path, name string) map[string]string {
	e, ok := present(m, name)
	if !ok {
		return nil
	}
	p := join(path, name)
	n := e.value
	if n.Kind != yaml.MappingNode {
		d.add(n, p, ErrType, nil, "expected a mapping of label names to values, got %s", describe(n))
		return nil
	}
	out := make(map[string]string, len(n.Content)/2)
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content) && !d.fatal; i += 2 {
		k, v := d.resolve(n.Content[i]), d.resolve(n.Content[i+1])
		if k == nil || v == nil {
			break
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			if k.ShortTag() == "!!merge" {
				d.add(k, p, ErrUnknownField, nil, "merge keys (<<) are not supported")
			} else {
				d.add(k, p, ErrType, nil, "label names must be strings, got %s", describe(k))
			}
			continue
		}
		lp := join(p, k.Value)
		if first, dup := seen[k.Value]; dup {
			d.add(k, lp, ErrDuplicate, nil, "label is set twice (first at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		if msg := checkLabelKey(k.Value); msg != "" {
			d.add(k, lp, ErrInvalidValue, nil, "label name %s %s", quoteShort(k.Value), msg)
			continue
		}
		val, ok := d.scalarString(v, lp)
		if !ok {
			continue
		}
		if msg := checkLabelValue(val); msg != "" {
			d.add(v, lp, ErrInvalidValue, nil, "label value %s %s", quoteShort(val), msg)
			continue
		}
		out[k.Value] = val
	}
	return out
}
