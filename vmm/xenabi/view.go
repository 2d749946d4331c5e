package xenabi

import "unsafe"

// View overlays a T on the start of b, which must be at least sizeof(T)
// bytes and suitably aligned (guest pages are); it returns nil otherwise.
// The result aliases b: writes go straight to guest memory.
func View[T any](b []byte) *T {
	var zero T
	n := unsafe.Sizeof(zero)
	if uintptr(len(b)) < n || n == 0 {
		return nil
	}
	p := unsafe.Pointer(&b[0])
	if uintptr(p)%unsafe.Alignof(zero) != 0 {
		return nil
	}
	return (*T)(p)
}

// Bytes returns the memory of *p as a byte slice (aliasing it), for copying
// an ABI struct to or from guest memory at any alignment.
func Bytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

// CString returns the NUL-terminated string at the start of b (all of b if
// it has no NUL), for the int8 arrays of the ABI structs.
func CString[T ~int8 | ~byte](b []T) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
