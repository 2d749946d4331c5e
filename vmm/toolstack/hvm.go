package toolstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/acpi"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/hvm"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// HVMConfig describes an HVM or PVH domain to create.
type HVMConfig struct {
	Name string
	ID   uint16 // 0 means 1
	Kind builder.ContainerKind
	// Image is the firmware (type = "hvm": firmware_override) or the
	// kernel (type = "pvh").
	Image []byte
	// ImageName is the image's path, for the configuration a save file
	// carries (firmware_override or kernel); may be empty.
	ImageName string
	MemSize   uint64 // bytes; 0 means DefaultMemSize
	Cmdline   string
	Console   io.Writer
	Log       *slog.Logger
	// Store, when set, is the xenstored the domain is introduced to: its
	// nodes under /local/domain/<ID> as libxl writes them, and its ring
	// at HVM_PARAM_STORE_PFN served with STORE_EVTCHN set (hvm.StorePort).
	// Without it STORE_EVTCHN stays 0.
	Store *xenstore.Store
}

// HVMDomain is an HVM or PVH domain: a KVM machine whose guest-physical
// addresses are the guest's frames, and the container's hypervisor side
// (package hvm). Run runs it in the foreground to its end; Start gives it
// a lifecycle (hvm_lifecycle.go) for an owner to serve: pause, unpause,
// the s3resume trigger, remote suspend and resume, shutdown and destroy.
type HVMDomain struct {
	ID     uint16
	Name   string
	Image  *builder.HVMImage
	Layout *builder.HVMLayout
	// ACPI is where the tables are (type = "hvm" only: a PVH guest gets
	// libxl's PVH tables, not built yet).
	ACPI *acpi.Tables
	Xen  *hvm.Domain
	m    *machine.Machine

	memSize   uint64
	imageName string
	store     *xenstore.Store // nil: not introduced
	ring      *xenstore.Ring
	lc        hvmLifecycle
}

// CreateHVM builds an HVM or PVH domain as libxl and libxc do for
// firmware_override or a PVH kernel: parse the image (ParseHVM), create the
// machine with RAM at guest-physical 0 and the hypervisor side, load the
// image and hvm_start_info (BuildHVM), and put vCPU 0 at the entry in
// 32-bit flat protected mode with %ebx = hvm_start_info. The domain does
// not run until Run.
func CreateHVM(cfg HVMConfig) (d *HVMDomain, err error) {
	img, err := builder.ParseHVM(cfg.Image)
	if err != nil {
		return nil, err
	}
	memSize := cfg.MemSize
	if memSize == 0 {
		memSize = DefaultMemSize
	}
	id := cfg.ID
	if id == 0 {
		id = 1
	}
	m, err := machine.New(machine.Config{MemSize: memSize, NumVCPUs: 1, SyncSregs: true, IRQChip: hvmIRQChip(cfg.Kind)})
	if err != nil {
		return nil, err
	}
	dom := &HVMDomain{ID: id, Name: cfg.Name, Image: img, m: m, memSize: memSize, imageName: cfg.ImageName, store: cfg.Store}
	dom.lc.init()
	defer func() {
		if err != nil {
			dom.release()
		}
	}()
	x, err := hvm.New(hvm.Config{Kind: cfg.Kind, ID: id, Machine: m, Console: cfg.Console, Log: cfg.Log, OnS3: dom.onS3, OnSuspend: dom.onGuestSuspend})
	if err != nil {
		return nil, err
	}
	layout, err := img.BuildHVM(m.Memory(), builder.HVMParams{Kind: cfg.Kind, MemSize: memSize, Cmdline: cfg.Cmdline})
	if err != nil {
		return nil, err
	}
	var tables *acpi.Tables
	if cfg.Kind == builder.KindHVM {
		if tables, err = placeACPI(m, img, layout); err != nil {
			return nil, err
		}
		x.SetFACS(tables.FACS)
		x.SetCMOSMemory(min(memSize, acpiArea)) // hvmloader's CMOS memory sizes
	}
	v0 := m.VCPUs()[0]
	s, err := v0.GetSregs()
	if err != nil {
		return nil, err
	}
	machine.FlatProtectedMode32(s)
	if err := v0.SetSregs(s); err != nil {
		return nil, err
	}
	if err := v0.SetRegs(&kvm.Regs{RIP: layout.Entry, RBX: layout.StartInfo, RFLAGS: 2}); err != nil {
		return nil, err
	}
	dom.Layout, dom.ACPI, dom.Xen = layout, tables, x
	if cfg.Store != nil {
		if err := dom.introduce(memSize); err != nil {
			return nil, err
		}
	}
	return dom, nil
}

// hvmIRQChip is the interrupt controllers Xen gives a container kind, as
// KVM's in-kernel models: an HVM domain has the LAPICs, IO-APIC, PIC pair
// and PIT; a PVH domain the LAPICs only (xen-hvm-pvh.md §9).
func hvmIRQChip(kind builder.ContainerKind) machine.IRQChip {
	if kind == builder.KindHVM {
		return machine.IRQChipFull
	}
	return machine.IRQChipSplit
}

// Where an HVM guest's ACPI tables go: hvmloader's area at 0xFC000000
// (ACPI_INFO_PHYSICAL_ADDRESS; the tables from the page after it), and the
// RSDP where an OS's legacy scan of 0xE0000-0xFFFFF finds it, as the BIOS
// leaves it. There is no hvmloader or BIOS here: the VMM places them.
const (
	acpiArea      = 0xfc000000
	acpiAreaPages = 16
	acpiTables    = acpiArea + machine.PageSize
	acpiRSDP      = 0xe0000
)

// placeACPI builds the HVM ACPI tables (package acpi) and loads them,
// with the firmware stub at the reset vector.
func placeACPI(m *machine.Machine, img *builder.HVMImage, l *builder.HVMLayout) (*acpi.Tables, error) {
	t, err := acpi.Build(acpiTables, acpiRSDP)
	if err != nil {
		return nil, err
	}
	// The BIOS area this firmware uses: the RSDP, and the stub at the
	// reset vector (hvm.FirmwareStub) that an S3 resume starts from.
	inBIOS := func(from, to uint64) bool {
		return from < t.RSDPAddr+uint64(len(t.RSDP)) && to > t.RSDPAddr ||
			from < hvm.ResetVector+uint64(len(hvm.FirmwareStub)) && to > hvm.ResetVector
	}
	if inBIOS(img.PStart, img.PEnd) || inBIOS(l.StartInfo, l.StartInfoEnd) {
		return nil, fmt.Errorf("the image (%#x-%#x) or hvm_start_info (%#x-%#x) covers the RSDP at %#x or the reset vector at %#x, in the BIOS area",
			img.PStart, img.PEnd, l.StartInfo, l.StartInfoEnd, t.RSDPAddr, hvm.ResetVector)
	}
	if uint64(len(t.Blob)) > (acpiAreaPages-1)*machine.PageSize {
		return nil, fmt.Errorf("ACPI tables of %d bytes do not fit their area", len(t.Blob))
	}
	if _, err := m.AddRegion("acpi", acpiArea, acpiAreaPages*machine.PageSize); err != nil {
		return nil, fmt.Errorf("ACPI area: %w", err)
	}
	if err := m.Memory().Write(t.Base, t.Blob); err != nil {
		return nil, fmt.Errorf("ACPI tables: %w", err)
	}
	if err := m.Memory().Write(t.RSDPAddr, t.RSDP); err != nil {
		return nil, fmt.Errorf("ACPI RSDP: %w", err)
	}
	if err := m.Memory().Write(hvm.ResetVector, hvm.FirmwareStub); err != nil {
		return nil, fmt.Errorf("firmware stub: %w", err)
	}
	return t, nil
}

// Run runs the domain until it shuts down, the VMM ends it (a crash
// report), or ctx is done.
func (d *HVMDomain) Run(ctx context.Context) (hvm.Exit, error) {
	d.lc.mu.Lock()
	released := d.lc.released
	d.lc.mu.Unlock()
	if released {
		return hvm.Exit{}, errors.New("the domain is destroyed")
	}
	e, err := d.Xen.Run(ctx)
	if err != nil {
		return e, fmt.Errorf("domain %d: %w", d.ID, err)
	}
	return e, nil
}

// Destroy ends the domain and releases its machine and its xenstore
// connection. A started domain goes through its lifecycle (Destroyed).
func (d *HVMDomain) Destroy() error {
	if d.lc.started() {
		return d.destroy()
	}
	return d.release()
}

// release closes the ring, removes the domain from xenstore, stops the
// platform devices' timers and closes the machine (the vCPUs have stopped,
// and no operation reads its memory), once.
func (d *HVMDomain) release() error {
	d.lc.mu.Lock()
	done := d.lc.released
	d.lc.released = true
	d.lc.mu.Unlock()
	if done {
		return nil
	}
	d.closeStore()
	if d.Xen != nil {
		d.Xen.Close() // the platform's timers
	}
	return d.m.Close()
}

// introduce writes the domain's xenstore nodes as libxl does for an HVM
// guest, serves its ring at HVM_PARAM_STORE_PFN and sets STORE_EVTCHN
// (xenstored's side of the port is dom0's, as libxl binds it).
func (d *HVMDomain) introduce(memSize uint64) error {
	s, id := d.store, uint32(d.ID)
	home := xenstore.DomainPath(id)
	ro := []xenstore.Perm{{Access: 'n', Domid: 0}, {Access: 'r', Domid: id}}
	rw := []xenstore.Perm{{Access: 'n', Domid: id}}
	memKiB := strconv.FormatUint(memSize>>10, 10)
	nodes := []xsNode{
		{home, "", ro},
		{home + "/name", d.Name, ro},
		{home + "/domid", strconv.Itoa(int(id)), ro},
		{home + "/control", "", ro},
		{home + "/control/shutdown", "", rw},
		{home + "/control/feature-poweroff", "", rw},
		{home + "/control/feature-reboot", "", rw},
		{home + "/control/feature-suspend", "", rw},
		{home + "/control/sysrq", "", rw},
		{home + "/device", "", ro},
		{home + "/data", "", rw},
		{home + "/memory", "", ro},
		{home + "/memory/static-max", memKiB, ro},
		{home + "/memory/target", memKiB, ro},
		{home + "/store", "", ro},
		{home + "/store/port", strconv.Itoa(hvm.StorePort), ro},
		{home + "/store/ring-ref", strconv.FormatUint(builder.StorePFN, 10), ro},
		{home + "/console", "", ro},
		{home + "/console/port", strconv.Itoa(hvm.ConsolePort), ro},
		{home + "/console/ring-ref", strconv.FormatUint(builder.ConsolePFN, 10), ro},
		{home + "/console/type", "xenconsoled", ro},
		{home + "/cpu/0/availability", "online", ro},
	}
	if d.Xen.Kind() == builder.KindHVM { // libxl__build_hvm's platform nodes
		nodes = append(nodes, []xsNode{
			{home + "/platform", "", ro},
			{home + "/platform/acpi", "1", ro},
			{home + "/platform/acpi_s3", "1", ro},
			{home + "/platform/acpi_s4", "1", ro},
		}...)
	}
	if err := writeNodes(s, nodes); err != nil {
		return err
	}
	page, err := d.m.Memory().Page(builder.StorePFN << 12)
	if err != nil {
		return fmt.Errorf("xenstore ring: %w", err)
	}
	// xenstored's notification raises the guest's xenstore port.
	ring, err := s.ServeRing(id, page, d.Xen.StoreEvent)
	if err != nil {
		return err
	}
	d.ring = ring
	d.Xen.SetStore(ring.Kick)
	s.IntroduceDomain(id)
	return nil
}

// closeStore disconnects the ring and removes the domain from xenstore.
func (d *HVMDomain) closeStore() {
	if d.store == nil {
		return
	}
	if d.ring != nil {
		d.ring.Close()
		d.ring = nil
	}
	d.store.ReleaseDomain(uint32(d.ID))
	d.store.Rm(xenstore.DomainPath(uint32(d.ID)))
}
