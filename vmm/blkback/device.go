package blkback

import (
	"fmt"
	"strconv"

	"github.com/xenresume/xenresume/vmm/xenstore"
)

// Device is a disk as the toolstack adds it: the part of libxl's
// libxl_device_disk a raw-image backend needs.
type Device struct {
	Domid        uint16 // the frontend's domain
	BackendDomid uint16 // the backend's domain, 0
	Devid        int    // virtual-device, e.g. 51712 (xvda)
	Vdev         string // the name in the guest's configuration, e.g. "xvda"
	Target       string // the image file: "params"
	Writable     bool   // mode "w", else "r"
	CDROM        bool   // device-type "cdrom", else "disk"
	NoDiscard    bool   // discard-enable "0"
	// Protocol, when set, is written to the frontend's protocol node, as
	// libxl does for PV guests (old frontends rely on it; new ones
	// overwrite it): "x86_64-abi" for a 64-bit PV guest.
	Protocol string
}

// FrontendPath returns /local/domain/<domid>/device/vbd/<devid>.
func (d Device) FrontendPath() string {
	return fmt.Sprintf("%s/device/vbd/%d", xenstore.DomainPath(uint32(d.Domid)), d.Devid)
}

// BackendPath returns /local/domain/<backend>/backend/vbd/<domid>/<devid>.
func (d Device) BackendPath() string {
	return fmt.Sprintf("%s/backend/vbd/%d/%d", xenstore.DomainPath(uint32(d.BackendDomid)), d.Domid, d.Devid)
}

// AddDevice writes the device's nodes on both sides as libxl's
// device_disk_add and libxl__device_generic_add do: each directory owned
// by its side's domain and readable by the other, both states
// Initialising. A Backend for the device is then started with Run.
func AddDevice(st *xenstore.Store, d Device) error {
	fe, be := d.FrontendPath(), d.BackendPath()
	mode, devType, discard := "r", "disk", "1"
	if d.Writable {
		mode = "w"
	}
	if d.CDROM {
		devType = "cdrom"
	}
	if d.NoDiscard {
		discard = "0"
	}
	init := strconv.Itoa(int(StateInitialising))
	front := [][2]string{
		{"backend", be},
		{"backend-id", strconv.Itoa(int(d.BackendDomid))},
		{"state", init},
		{"virtual-device", strconv.Itoa(d.Devid)},
		{"device-type", devType},
	}
	if d.Protocol != "" {
		front = append(front, [2]string{"protocol", d.Protocol})
	}
	back := [][2]string{
		{"frontend", fe},
		{"params", d.Target},
		{"frontend-id", strconv.Itoa(int(d.Domid))},
		{"online", "1"},
		{"removable", "0"},
		{"bootable", "1"},
		{"state", init},
		{"dev", d.Vdev},
		{"type", "phy"},
		{"mode", mode},
		{"device-type", devType},
		{"discard-enable", discard},
	}
	dirs := []struct {
		path  string
		perms []xenstore.Perm
		nodes [][2]string
	}{
		{fe, []xenstore.Perm{{Access: 'n', Domid: uint32(d.Domid)}, {Access: 'r', Domid: uint32(d.BackendDomid)}}, front},
		{be, []xenstore.Perm{{Access: 'n', Domid: uint32(d.BackendDomid)}, {Access: 'r', Domid: uint32(d.Domid)}}, back},
	}
	for _, dir := range dirs {
		if err := st.Rm(dir.path); err != nil && err != xenstore.ENOENT {
			return fmt.Errorf("blkback: removing %s: %w", dir.path, err)
		}
		if err := st.Write(dir.path, ""); err != nil {
			return fmt.Errorf("blkback: writing %s: %w", dir.path, err)
		}
		if err := st.SetPerms(dir.path, dir.perms...); err != nil {
			return fmt.Errorf("blkback: permissions of %s: %w", dir.path, err)
		}
		for _, kv := range dir.nodes {
			if err := st.Write(dir.path+"/"+kv[0], kv[1]); err != nil {
				return fmt.Errorf("blkback: writing %s/%s: %w", dir.path, kv[0], err)
			}
		}
	}
	return nil
}

// RemoveDevice removes both sides' nodes (libxl's device removal, after
// the backend reached Closed). The frontend's state node going away ends
// the Backend's Run.
func RemoveDevice(st *xenstore.Store, d Device) error {
	for _, p := range []string{d.FrontendPath(), d.BackendPath()} {
		if err := st.Rm(p); err != nil && err != xenstore.ENOENT {
			return fmt.Errorf("blkback: removing %s: %w", p, err)
		}
	}
	return nil
}
