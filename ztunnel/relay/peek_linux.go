package relay

import (
	"syscall"
	"unsafe"
)

// peekReady reports whether a read on fd would not block (data, EOF or a
// pending error), without consuming anything. It uses the raw syscall so
// no sockaddr is allocated.
func peekReady(fd int) bool {
	var b [1]byte
	_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno != syscall.EAGAIN && errno != syscall.EINTR
}
