package bufpool

import "testing"

func TestGetClasses(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{0, 4 << 10}, {1, 4 << 10}, {4 << 10, 4 << 10}, {4<<10 + 1, 16 << 10},
		{64 << 10, 64 << 10}, {300 << 10, 1 << 20}, {1 << 20, 1 << 20}, {8 << 20, 1 << 20},
	} {
		b := Get(tc.n)
		if len(*b) != tc.want || cap(*b) != tc.want {
			t.Errorf("Get(%d): len %d cap %d, want %d", tc.n, len(*b), cap(*b), tc.want)
		}
		Put(b)
	}
}

func TestPutRestoresLength(t *testing.T) {
	b := Get(16 << 10)
	*b = (*b)[:10]
	Put(b)
	// Whatever the pool returns next must have the full class length.
	if got := Get(16 << 10); len(*got) != 16<<10 {
		t.Fatalf("len %d after Put of a resliced buffer", len(*got))
	}
}

func TestPutDropsOddSizes(t *testing.T) {
	odd := make([]byte, 5000)
	Put(&odd) // must not panic nor poison the 16K class
	if got := Get(5000); cap(*got) != 16<<10 {
		t.Fatalf("cap %d, want 16 KiB", cap(*got))
	}
	Put(nil)
}

func BenchmarkGetPut(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Put(Get(64 << 10))
	}
}
