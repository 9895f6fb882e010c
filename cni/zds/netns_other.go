//go:build !linux

package zds

import "errors"

// checkNetns: network namespaces exist only on Linux.
func checkNetns(int) error { return errors.New("network namespaces need Linux") }
