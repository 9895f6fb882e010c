// Package bufpool hands out byte buffers of a few fixed size classes from
// sync.Pools, so that the data path copies bytes without allocating in
// steady state. Buffers are passed as *[]byte so that Put does not allocate.
package bufpool

import "sync"

// Size classes: 4 KiB up to 1 MiB, powers of four. Get(n) returns the
// smallest class that holds n (or the largest class when n is bigger).
const (
	minShift   = 12 // 4 KiB
	classCount = 5  // 4K, 16K, 64K, 256K, 1M
	// MaxSize is the largest buffer the pool hands out.
	MaxSize = 1 << (minShift + 2*(classCount-1))
)

var pools [classCount]sync.Pool

func init() {
	for i := range pools {
		size := 1 << (minShift + 2*i)
		pools[i].New = func() any {
			b := make([]byte, size)
			return &b
		}
	}
}

func class(n int) int {
	for i := 0; i < classCount; i++ {
		if n <= 1<<(minShift+2*i) {
			return i
		}
	}
	return classCount - 1
}

// Get returns a buffer with len == cap == the class size for n.
func Get(n int) *[]byte {
	return pools[class(n)].Get().(*[]byte)
}

// Put returns b to its pool. Buffers not obtained from Get (odd sizes) are
// dropped so a pool never holds a buffer of the wrong class.
func Put(b *[]byte) {
	if b == nil {
		return
	}
	c := cap(*b)
	i := class(c)
	if c != 1<<(minShift+2*i) {
		return
	}
	*b = (*b)[:c]
	pools[i].Put(b)
}
