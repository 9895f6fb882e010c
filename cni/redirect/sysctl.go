package redirect

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
)

// podSysctls are the network-namespace sysctls ApplySysctls writes.
//
// net.ipv4.tcp_migrate_req=1 (Linux 5.14+; it also covers IPv6): when a
// listener of a SO_REUSEPORT group closes, the connections in its accept
// queue and its half-open requests move to a sibling listener of the
// group instead of being reset. ztunnel binds its in-pod listeners with
// SO_REUSEPORT, so during a restart the old process closes its listeners
// while the new one, already bound beside it, takes everything the old one
// had not accepted yet.
var podSysctls = []struct{ key, value string }{
	{"net.ipv4.tcp_migrate_req", "1"},
}

// ApplySysctls writes the sysctls the proxy relies on in the network
// namespace of the calling OS thread: call it inside InNetNS, as the
// Backend methods. It is idempotent. A kernel without tcp_migrate_req
// (before 5.14) gives an error wrapping fs.ErrNotExist; a ztunnel restart
// there resets the connections the old process had not accepted yet.
func ApplySysctls() error {
	// /proc/sys/net resolves to the namespace of the thread that opens
	// the file: stay on this (the caller's locked) thread throughout.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, s := range podSysctls {
		if err := writeSysctl(s.key, s.value); err != nil {
			return err
		}
	}
	return nil
}

func writeSysctl(key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return sysctlErr(key, value, err)
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return sysctlErr(key, value, err)
	}
	return nil
}

func sysctlErr(key, value string, err error) error {
	hint := ""
	switch {
	case errors.Is(err, os.ErrNotExist):
		hint = " (unknown to this kernel: tcp_migrate_req needs Linux 5.14 or later)"
	case errors.Is(err, syscall.EROFS):
		hint = " (/proc/sys is mounted read-only: the agent needs a writable /proc/sys in the pod netns)"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		hint = " (need CAP_NET_ADMIN in the pod netns)"
	}
	return fmt.Errorf("redirect: sysctl %s=%s: %w%s", key, value, err, hint)
}
