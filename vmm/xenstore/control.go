package xenstore

import (
	"fmt"
	"strconv"
	"strings"
)

// controlCmds are the XS_CONTROL commands served, with C xenstored's
// parameter synopsis (tools/xenstored/control.c). Xen's others (logfile,
// memreport, live-update) concern its own process and are unknown here:
// EINVAL, as Xen answers an unknown command.
var controlCmds = []struct{ name, pars string }{
	{"check", ""},
	{"log", "[on|off|+<switch>|-<switch>]"},
	{"print", "<string>"},
	{"quota", "[set <name> <val>|<domid>|max [-r]]"},
	{"quota-soft", "[set <name> <val>]"},
	{"help", ""},
}

// traceSwitches are "log"'s switches: io traces each request and its
// answer, acc every quota hit (not only a connection's first of a kind).
// "log on" starts tracing with them, "log off" stops it.
var traceSwitches = []string{"io", "acc"}

// control serves XS_CONTROL from dom0: <command>|[<parameters>|]*.
func (c *Conn) control(p []byte) ([]byte, error) {
	a := nulStrings(p)
	if len(a) == 0 {
		return nil, EINVAL
	}
	s := c.s
	cmd, args := a[0], a[1:]
	switch cmd {
	case "check":
		if len(args) != 0 {
			return nil, EINVAL
		}
		s.check()
		return ok, nil
	case "log":
		return s.controlLog(args)
	case "print":
		if len(args) != 1 {
			return nil, EINVAL
		}
		s.log.Info("xenstore: control print", "conn", c.Name, "msg", args[0])
		return ok, nil
	case "quota":
		return s.controlQuota(args, false)
	case "quota-soft":
		return s.controlQuota(args, true)
	case "help":
		if len(args) != 0 {
			return nil, EINVAL
		}
		var b strings.Builder
		for _, cm := range controlCmds {
			fmt.Fprintf(&b, "%-15s %s\n", cm.name, cm.pars)
		}
		return reply(b.String())
	}
	return nil, EINVAL
}

// reply is a CONTROL answer: text and a NUL, at most a payload (else
// E2BIG, as Xen's send_reply).
func reply(text string) ([]byte, error) {
	if len(text)+1 > PayloadMax {
		return nil, E2BIG
	}
	return []byte(text + "\x00"), nil
}

func (s *Store) controlLog(args []string) ([]byte, error) {
	if len(args) == 0 {
		var b strings.Builder
		b.WriteString("Log switch settings:\n")
		for _, sw := range traceSwitches {
			on := map[string]bool{"io": s.trace.io, "acc": s.trace.acc}[sw]
			fmt.Fprintf(&b, "%-8s: %s\n", sw, map[bool]string{true: "on", false: "off"}[on])
		}
		fmt.Fprintf(&b, "%-8s: %s\n", "tracing", map[bool]string{true: "on", false: "off"}[s.trace.on])
		return reply(b.String())
	}
	if len(args) != 1 {
		return nil, EINVAL
	}
	switch arg := args[0]; {
	case arg == "on" || arg == "off":
		s.trace.on = arg == "on"
	case len(arg) > 1 && (arg[0] == '+' || arg[0] == '-'):
		set := arg[0] == '+'
		switch arg[1:] {
		case "io":
			s.trace.io = set
		case "acc":
			s.trace.acc = set
		default:
			return nil, EINVAL
		}
	default:
		return nil, EINVAL
	}
	return ok, nil
}

// quotaKinds are the per-connection kinds, in Xen's listing order where
// Xen has them.
var quotaKinds = []QuotaKind{
	QuotaNodes, QuotaWatches, QuotaOutstanding, QuotaTransactions, QuotaTransactionNodes,
	QuotaPerms, QuotaPathLen, QuotaNodeSize, QuotaEvents, QuotaOutput,
}

// controlQuota is "quota" and "quota-soft": the unprivileged domains'
// limits (hard or soft), setting one, a domain's current and highest
// values, or the highest values any domain reached.
func (s *Store) controlQuota(args []string, soft bool) ([]byte, error) {
	l := s.limits.Load()
	q := l.Guest
	if soft {
		q = l.GuestSoft
	}
	if len(args) == 0 {
		var b strings.Builder
		b.WriteString("Quota settings:\n")
		for _, k := range quotaKinds {
			fmt.Fprintf(&b, "%-17s: %8d %s\n", k, q.Get(k), quotaInfo[k].descr)
		}
		return reply(b.String())
	}
	switch {
	case args[0] == "set":
		if len(args) != 3 {
			return nil, EINVAL
		}
		var k QuotaKind
		v, err := strconv.Atoi(args[2])
		if err != nil || v < 1 || k.UnmarshalText([]byte(args[1])) != nil || q.field(k) == nil {
			return nil, EINVAL
		}
		s.updateLimits(func(l *Limits) {
			if soft {
				l.GuestSoft.Set(k, v)
			} else {
				l.Guest.Set(k, v)
			}
		})
		s.log.Info("xenstore: quota set", "quota", k.String(), "value", v, "soft", soft)
		return ok, nil
	case soft:
		return nil, EINVAL
	case args[0] == "max":
		if len(args) > 2 || len(args) == 2 && args[1] != "-r" {
			return nil, EINVAL
		}
		if len(args) == 2 {
			s.maxSeen = [numQuotaKinds]int{}
			for _, a := range s.doms {
				a.max = [numQuotaKinds]int{}
			}
		}
		var b strings.Builder
		b.WriteString("Max. seen accounting values:\n")
		for _, k := range quotaKinds {
			fmt.Fprintf(&b, "%-17s: %8d\n", k, s.maxSeen[k])
		}
		return reply(b.String())
	case len(args) == 1:
		id, err := strconv.ParseUint(args[0], 10, 16)
		if err != nil {
			return nil, EINVAL
		}
		domid := uint32(id)
		a := s.doms[domid]
		if a == nil && s.intro[domid] == nil && s.owned[domid] == 0 {
			return nil, ENOENT
		}
		if a == nil {
			a = &domainAcc{}
		}
		cur := s.domainValues(domid)
		var b strings.Builder
		fmt.Fprintf(&b, "Domain %d:\n", domid)
		for _, k := range quotaKinds {
			fmt.Fprintf(&b, "%-17s: %8d (max %8d)\n", k, cur[k], max(a.max[k], cur[k]))
		}
		return reply(b.String())
	}
	return nil, EINVAL
}

// domainValues is what a domain holds now of each kind that has a
// current value.
func (s *Store) domainValues(domid uint32) [numQuotaKinds]int {
	var v [numQuotaKinds]int
	v[QuotaNodes] = s.owned[domid]
	for c := range s.conns {
		if c.Domid != domid {
			continue
		}
		v[QuotaWatches] += len(c.watches)
		v[QuotaTransactions] += len(c.txns)
		v[QuotaOutstanding] += int(c.outstanding.Load())
		v[QuotaEvents] += len(c.events)
		v[QuotaOutput] += c.evBytes
		for _, t := range c.txns {
			v[QuotaTransactionNodes] = max(v[QuotaTransactionNodes], len(t.nodes))
		}
	}
	return v
}
