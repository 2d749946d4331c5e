package machine

import "unsafe"

func sliceAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
