package machine

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// retryEINTR repeats an ioctl a signal interrupted and returns every other
// result as it is.
func TestRetryEINTR(t *testing.T) {
	n := 0
	v, err := retryEINTR(func() (uintptr, error) {
		if n++; n < 3 {
			return 0, unix.EINTR
		}
		return 7, nil
	})
	if v != 7 || err != nil || n != 3 {
		t.Errorf("after two EINTRs: %d, %v, %d calls; want 7, nil, 3", v, err, n)
	}
	n = 0
	_, err = retryEINTR(func() (uintptr, error) { n++; return 0, unix.EBADF })
	if !errors.Is(err, unix.EBADF) || n != 1 {
		t.Errorf("EBADF: %v after %d calls; want it at once", err, n)
	}
}
