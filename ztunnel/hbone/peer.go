package hbone

import (
	"errors"
	"syscall"
)

// isFDExhaustion reports accept errors a proxy must survive by waiting:
// out of file descriptors or kernel memory.
func isFDExhaustion(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
