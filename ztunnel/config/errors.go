package config

import (
	"errors"
	"fmt"
	"strconv"
)

// Error kinds; every *FieldError wraps exactly one of them.
var (
	// ErrSyntax: the file is not well-formed YAML, is empty or holds
	// several documents.
	ErrSyntax = errors.New("syntax error")
	// ErrUnknownField: a mapping has a key the format does not define.
	ErrUnknownField = errors.New("unknown field")
	// ErrType: a value has the wrong YAML type (a list where a string is
	// expected, a quoted number where an integer is expected, ...).
	ErrType = errors.New("wrong type")
	// ErrRequired: a required field is missing or empty.
	ErrRequired = errors.New("missing required field")
	// ErrInvalidValue: a value has the right type but is not acceptable
	// (bad IP address, port out of range, unknown enum value, ...).
	ErrInvalidValue = errors.New("invalid value")
	// ErrDuplicate: a uid, IP, VIP, name or key is used twice.
	ErrDuplicate = errors.New("duplicate")
)

// FieldError is one problem in a configuration file. Its message is
//
//	config: <file>:<line>: <path>: <what is wrong>
//
// for example
//
//	config: example.yaml:14: workloads[1].ips[0]: "10.0.0.300" is not an IP address
type FieldError struct {
	File   string
	Line   int    // 1-based; 0 when unknown
	Column int    // 1-based; 0 when unknown
	Path   string // e.g. workloads[1].ips[0]; "" for the whole file
	Msg    string
	Kind   error // one of the Err* kinds
	Err    error // the underlying cause, if any
}

func (e *FieldError) Error() string {
	s := "config: " + e.File
	if e.Line > 0 {
		s += ":" + strconv.Itoa(e.Line)
	}
	if e.Path != "" {
		s += ": " + e.Path
	}
	return s + ": " + e.Msg
}

// Unwrap returns the kind and the cause, for errors.Is and errors.As.
func (e *FieldError) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

// errorList joins FieldErrors; Parse returns one. Its message has one line
// per error, in file order.
func joinFieldErrors(errs []*FieldError) error {
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}

// wrapEach prefixes every error joined in err (or err itself) with prefix.
func wrapEach(err error, format string, args ...any) error {
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	} else {
		list = []error{err}
	}
	out := make([]error, len(list))
	for i, e := range list {
		out[i] = fmt.Errorf(format+": %w", append(args, e)...)
	}
	return errors.Join(out...)
}
