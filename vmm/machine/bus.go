package machine

import "sync"

// PIODevice handles port I/O. For a write (OUT), data holds the bytes the
// guest wrote; for a read (IN), the device fills data. An error crashes the
// domain with a report.
type PIODevice interface {
	PIO(v *VCPU, port uint16, write bool, data []byte) error
}

// PIOFunc adapts a function to PIODevice.
type PIOFunc func(v *VCPU, port uint16, write bool, data []byte) error

// PIO calls f.
func (f PIOFunc) PIO(v *VCPU, port uint16, write bool, data []byte) error {
	return f(v, port, write, data)
}

// IOBus routes port I/O to devices. Ports no device claims read as all ones
// and ignore writes, like an unpopulated ISA bus.
type IOBus struct {
	mu      sync.RWMutex
	devices map[uint16]PIODevice
}

// Register claims ports [port, port+n) for dev, replacing any earlier claim.
func (b *IOBus) Register(port uint16, n int, dev PIODevice) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.devices == nil {
		b.devices = make(map[uint16]PIODevice)
	}
	for i := 0; i < n; i++ {
		b.devices[port+uint16(i)] = dev
	}
}

func (b *IOBus) lookup(port uint16) PIODevice {
	b.mu.RLock()
	d := b.devices[port]
	b.mu.RUnlock()
	return d
}
