package toolstack

import (
	"testing"
	"time"
	"unsafe"
)

// allZero finds a non-zero byte anywhere: first, last, in the middle of a
// page, in the second page, in a tail shorter than a word.
func TestAllZero(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		set  int // -1: none
		want bool
	}{
		{"empty", 0, -1, true},
		{"zero page", 4096, -1, true},
		{"first byte", 4096, 0, false},
		{"last byte", 4096, 4095, false},
		{"middle", 4096, 2049, false},
		{"second page", 8192, 4096 + 77, false},
		{"two zero pages", 8192, -1, true},
		{"tail byte", 4099, 4098, false},
		{"short", 3, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := make([]byte, tc.size)
			if tc.set >= 0 {
				b[tc.set] = 0x40
			}
			if got := allZero(b); got != tc.want {
				t.Errorf("allZero = %v, want %v", got, tc.want)
			}
		})
	}
}

// wordZero is the word loop allZero replaced, the baseline of
// BenchmarkAllZero.
func wordZero(b []byte) bool {
	for len(b) >= 8 {
		if *(*uint64)(unsafe.Pointer(&b[0])) != 0 {
			return false
		}
		b = b[8:]
	}
	return true
}

// BenchmarkAllZero: checking 1 MiB of zero pages a page at a time, as a
// save does for each resident page, against the former word loop in the
// same run (x-word-loop: allZero's time over the loop's).
func BenchmarkAllZero(b *testing.B) {
	buf := make([]byte, 1<<20)
	var fast, slow time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		for off := 0; off < len(buf); off += 4096 {
			if !allZero(buf[off : off+4096]) {
				b.Fatal("not zero")
			}
		}
		t1 := time.Now()
		for off := 0; off < len(buf); off += 4096 {
			if !wordZero(buf[off : off+4096]) {
				b.Fatal("not zero")
			}
		}
		fast, slow = fast+t1.Sub(t0), slow+time.Since(t1)
	}
	b.SetBytes(int64(len(buf)))
	b.ReportMetric(float64(fast)/float64(slow), "x-word-loop")
}
