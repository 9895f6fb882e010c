// Package archtest holds a test that pins the import graph of the module
// (see archtest_test.go); it has no code of its own.
package archtest
