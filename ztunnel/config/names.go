package config

import (
	"strings"
	"unicode"

	"github.com/strait-mesh/strait/ztunnel/rbac"
)

// Kubernetes name checks; each returns "" when s is fine, else a phrase
// that completes "<value> ...".

func checkDNSLabel(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > 63:
		return "is longer than 63 characters (want a DNS-1123 label)"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return "is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
		}
	}
	return ""
}

// checkServiceName: a DNS-1035 label (Kubernetes service names start with
// a letter).
func checkServiceName(s string) string {
	if msg := checkDNSLabel(s); msg != "" {
		return msg
	}
	if s[0] < 'a' || s[0] > 'z' {
		return "must start with a lowercase letter (a Kubernetes service name is a DNS-1035 label)"
	}
	return ""
}

func checkDNSSubdomain(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > 253:
		return "is longer than 253 characters (want a DNS-1123 subdomain)"
	}
	for l := range strings.SplitSeq(s, ".") {
		if checkDNSLabel(l) != "" {
			return "is not a DNS-1123 subdomain (dot-separated lowercase labels of letters, digits and '-')"
		}
	}
	return ""
}

// checkUID accepts any non-empty printable string without white space.
func checkUID(s string) string {
	if s == "" {
		return "is empty"
	}
	if len(s) > 253 {
		return "is longer than 253 characters"
	}
	for _, r := range s {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return "contains white space or a control character"
		}
	}
	return ""
}

// Kubernetes label syntax: a key is [prefix/]name, the prefix a DNS-1123
// subdomain, the name at most 63 of [A-Za-z0-9-_.] starting and ending with
// an alphanumeric; a value is empty or like a name.

func checkLabelKey(k string) string {
	name := k
	if i := strings.LastIndexByte(k, '/'); i >= 0 {
		prefix := k[:i]
		name = k[i+1:]
		if checkDNSSubdomain(prefix) != "" {
			return "has an invalid prefix (want a DNS-1123 subdomain before the '/')"
		}
	}
	if name == "" {
		return "is empty"
	}
	if !isLabelName(name) {
		return "is not a valid label name (at most 63 of letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"
	}
	return ""
}

func checkLabelValue(v string) string {
	if v == "" || isLabelName(v) {
		return ""
	}
	return "is not a valid label value (empty, or at most 63 of letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"
}

func isLabelName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || i == len(s)-1 || (c != '-' && c != '_' && c != '.')) {
			return false
		}
	}
	return true
}

// trimSentinel drops the "rbac: " prefix and the ": <sentinel>" that rbac
// errors carry, so messages read naturally under config's own prefix; the
// sentinel is still reachable with errors.Is.
func trimSentinel(err error) string {
	msg := strings.TrimPrefix(err.Error(), "rbac: ")
	for _, s := range []error{rbac.ErrInvalidPattern, rbac.ErrInvalidPolicy} {
		msg = strings.Replace(msg, ": "+s.Error(), "", 1)
	}
	return msg
}
