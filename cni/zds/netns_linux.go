//go:build linux

package zds

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// checkNetns reports why fd is not a network namespace, or nil. The fd must
// live on nsfs (fstatfs magic NSFS_MAGIC) and, where the kernel supports
// NS_GET_NSTYPE (4.11+), be of type CLONE_NEWNET; so a pipe, a regular file
// or another kind of namespace (mnt, pid, ...) is refused.
func checkNetns(fd int) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("fstatfs: %w", err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("fd is on filesystem %#x, not nsfs", uint64(st.Type))
	}
	t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	switch {
	case errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL):
		return nil // kernel before 4.11: nsfs is all we can tell
	case err != nil:
		return fmt.Errorf("NS_GET_NSTYPE: %w", err)
	case t != unix.CLONE_NEWNET:
		return fmt.Errorf("namespace type %#x, want CLONE_NEWNET", t)
	}
	return nil
}
