package xen

import (
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Time constants (vcpu.h, xen.h).
const (
	VIRQTimer        = 0
	sshotFuture      = 1 << 0 // VCPU_SSHOTTMR_future
	pvclockTSCStable = 1      // XEN_PVCLOCK_TSC_STABLE_BIT
	nsPerSec         = 1_000_000_000
)

// TSCScale returns the vcpu_time_info multiplier and shift that turn a TSC
// delta at hz into nanoseconds: ns = ((delta << shift) * mul) >> 32, a
// negative shift meaning a right shift (Xen's compute_tsc_scale).
func TSCScale(hz uint64) (mul uint32, shift int8) {
	if hz == 0 {
		return 0, 0
	}
	// mul = 1e9 * 2^32 / (hz * 2^shift), computed exactly in 128 bits,
	// with the shift that puts it in [2^31, 2^32).
	for {
		hi, lo := bits.Mul64(nsPerSec, 1<<(32-int(shift)))
		var q uint64
		if hi < hz {
			q, _ = bits.Div64(hi, lo, hz)
		} else {
			q = math.MaxUint64
		}
		switch {
		case q >= 1<<32 && shift < 31:
			shift++ // ticks too slow: scale them up
		case q < 1<<31 && shift > -31:
			shift--
		default:
			return uint32(min(q, math.MaxUint32)), shift
		}
	}
}

// UpdateTime writes every vCPU's vcpu_time_info (its TSC paired with the
// domain's system time, and the scale from KVM's guest TSC frequency) and
// the wallclock (Unix time at system time 0), with Xen's version protocol.
// Call it while the vCPUs are not running (at creation and on resume); it
// fails with machine.ErrNotParked otherwise.
func (d *Domain) UpdateTime() error {
	if d.m == nil {
		return fmt.Errorf("domain %d has no machine to take the TSC from", d.id)
	}
	si := d.SharedInfo()
	for _, v := range d.m.VCPUs() {
		if v.ID >= len(si.Vcpu_info) {
			break
		}
		khz, err := v.TSCKHz()
		if err != nil {
			return fmt.Errorf("domain %d time: %w", d.id, err)
		}
		tsc, err := v.TSC()
		if err != nil {
			return fmt.Errorf("domain %d time: %w", d.id, err)
		}
		now := d.SystemTime()
		mul, shift := TSCScale(uint64(khz) * 1000)
		t := &d.vcpuInfoOf(v.ID).Time
		ver := atomic.AddUint32(&t.Version, 1) // odd: update in progress
		if ver%2 == 0 {
			ver = atomic.AddUint32(&t.Version, 1)
		}
		t.Tsc_timestamp, t.System_time = tsc, now
		t.Tsc_to_system_mul, t.Tsc_shift, t.Flags = mul, shift, pvclockTSCStable
		atomic.StoreUint32(&t.Version, ver+1)
	}
	wc := d.created
	atomic.AddUint32(&si.Wc_version, 1)
	si.Wc_sec, si.Wc_nsec, si.Wc_sec_hi = uint32(wc.Unix()), uint32(wc.Nanosecond()), uint32(uint64(wc.Unix())>>32)
	atomic.AddUint32(&si.Wc_version, 1)
	return nil
}

// SetSystemTime makes the domain's system time read ns now, so that a
// restored guest's clock continues where it was saved instead of jumping
// back to zero.
func (d *Domain) SetSystemTime(ns uint64) {
	d.created = time.Now().Add(-time.Duration(ns))
	for i := range d.sched {
		// The runstates count from here, not from a system time zero
		// the guest never saw.
		s := &d.sched[i]
		s.mu.Lock()
		s.rs = runstate{state: s.rs.state, entry: ns}
		s.mu.Unlock()
	}
}

// armTimer sets vcpu's single-shot timer to raise VIRQ_TIMER at the
// absolute system time deadline (0 stops it).
func (d *Domain) armTimer(vcpu int, deadline uint64) {
	d.timerMu.Lock()
	defer d.timerMu.Unlock()
	if d.timers == nil {
		d.timers = make([]*time.Timer, len(d.cpus))
	}
	if t := d.timers[vcpu]; t != nil {
		t.Stop()
		d.timers[vcpu] = nil
	}
	if deadline == 0 || d.timersStopped {
		return
	}
	var wait time.Duration
	if now := d.SystemTime(); deadline > now {
		wait = time.Duration(deadline - now)
	}
	var t *time.Timer
	t = time.AfterFunc(wait, func() {
		// Under timerMu, so that a timer stopped or re-armed after it
		// fired but before this ran raises nothing, and stopTimers
		// waits for a raise in flight.
		d.timerMu.Lock()
		defer d.timerMu.Unlock()
		if d.timersStopped || d.timers[vcpu] != t {
			return
		}
		d.timers[vcpu] = nil
		d.RaiseVIRQ(VIRQTimer, uint32(vcpu))
	})
	d.timers[vcpu] = t
}

// armPeriodic sets vCPU vcpu's periodic timer (VCPUOP_set_periodic_timer)
// to raise VIRQ_TIMER every period ns from now on (0 stops it).
func (d *Domain) armPeriodic(vcpu int, period uint64) {
	d.timerMu.Lock()
	defer d.timerMu.Unlock()
	if d.periodic == nil {
		d.periodic = make([]*time.Timer, len(d.cpus))
	}
	if t := d.periodic[vcpu]; t != nil {
		t.Stop()
		d.periodic[vcpu] = nil
	}
	if period == 0 || d.timersStopped {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(time.Duration(period), func() {
		d.timerMu.Lock()
		defer d.timerMu.Unlock()
		if d.timersStopped || d.periodic[vcpu] != t {
			return
		}
		t.Reset(time.Duration(period))
		d.RaiseVIRQ(VIRQTimer, uint32(vcpu))
	})
	d.periodic[vcpu] = t
}

// stopTimers cancels every timer, for good (the domain is going away):
// once it returns, no timer touches the domain's shared_info again.
func (d *Domain) stopTimers() {
	d.timerMu.Lock()
	defer d.timerMu.Unlock()
	d.timersStopped = true
	for _, ts := range [][]*time.Timer{d.timers, d.periodic} {
		for i, t := range ts {
			if t != nil {
				t.Stop()
				ts[i] = nil
			}
		}
	}
}

// singleshot handles VCPUOP_set_singleshot_timer for the calling vCPU.
func singleshot(c *call, arg uint64) int64 {
	b, ok := c.arg(arg, 16)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	deadline, flags := u64(b), u32(b[8:])
	if flags&sshotFuture != 0 && deadline < c.d.SystemTime() {
		return errno(xenabi.ETIME)
	}
	c.d.armTimer(c.id, deadline)
	return 0
}

// setTimerOp is the set_timer_op hypercall: an absolute deadline, 0 stops.
func setTimerOp(c *call) int64 {
	c.d.armTimer(c.id, c.args[0])
	return 0
}
