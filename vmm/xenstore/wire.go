// Package xenstore is xenstored in Go: Xen's configuration tree with its
// permissions, transactions, watches and per-domain quotas, serving the
// xenstore wire protocol (io/xs_wire.h) over two transports: a guest's ring
// page with its event channel, and a Unix socket that Debian's unmodified
// xenstore-utils speak to (point them at it with XENSTORED_PATH).
//
// Guest- and client-controlled input never panics the store, blocks it,
// or grows it without bound: malformed messages close the connection that
// sent them, unprivileged domains are held to C xenstored's quotas and
// errors, socket clients to limits on transactions, watches, queued
// events and connections (Limits), and every limit reached is logged and
// counted (Stats). Transactions are journals of the nodes they touched,
// committed all or nothing. docs/XENSTORE.md has the details.
package xenstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Message types (XS_*).
const (
	XSControl            = 0
	XSDirectory          = 1
	XSRead               = 2
	XSGetPerms           = 3
	XSWatch              = 4
	XSUnwatch            = 5
	XSTransactionStart   = 6
	XSTransactionEnd     = 7
	XSIntroduce          = 8
	XSRelease            = 9
	XSGetDomainPath      = 10
	XSWrite              = 11
	XSMkdir              = 12
	XSRm                 = 13
	XSSetPerms           = 14
	XSWatchEvent         = 15
	XSError              = 16
	XSIsDomainIntroduced = 17
	XSResume             = 18
	XSSetTarget          = 19
	XSResetWatches       = 21
	XSDirectoryPart      = 22
	XSGetFeature         = 23
	XSSetFeature         = 24
	XSGetQuota           = 25
	XSSetQuota           = 26
)

var typeNames = map[uint32]string{
	XSControl: "CONTROL", XSDirectory: "DIRECTORY", XSRead: "READ", XSGetPerms: "GET_PERMS",
	XSWatch: "WATCH", XSUnwatch: "UNWATCH", XSTransactionStart: "TRANSACTION_START",
	XSTransactionEnd: "TRANSACTION_END", XSIntroduce: "INTRODUCE", XSRelease: "RELEASE",
	XSGetDomainPath: "GET_DOMAIN_PATH", XSWrite: "WRITE", XSMkdir: "MKDIR", XSRm: "RM",
	XSSetPerms: "SET_PERMS", XSWatchEvent: "WATCH_EVENT", XSError: "ERROR",
	XSIsDomainIntroduced: "IS_DOMAIN_INTRODUCED", XSResume: "RESUME", XSSetTarget: "SET_TARGET",
	XSResetWatches: "RESET_WATCHES", XSDirectoryPart: "DIRECTORY_PART",
	XSGetFeature: "GET_FEATURE", XSSetFeature: "SET_FEATURE", XSGetQuota: "GET_QUOTA", XSSetQuota: "SET_QUOTA",
}

// TypeName names a message type.
func TypeName(t uint32) string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("XS(%d)", t)
}

// Wire limits (io/xs_wire.h).
const (
	HeaderSize = 16
	PayloadMax = 4096
	AbsPathMax = 3072
	RelPathMax = 2048
	RingSize   = 1024 // XENSTORE_RING_SIZE: xenabi.XenstoreDomainInterface's Req and Rsp
)

// Ring server features and states.
const (
	FeatureReconnection = 1
	FeatureError        = 2
	Connected           = 0
	Reconnect           = 1
	ErrorNone           = 0
	ErrorComm           = 1
	ErrorRingIdx        = 2
	ErrorProto          = 3
)

// Msg is one xenstore message: the xsd_sockmsg header and its payload.
type Msg struct {
	Type    uint32
	ReqID   uint32
	TxID    uint32
	Payload []byte
}

// ErrMalformed is wrapped by errors about a message that breaks the wire
// format; the connection that sent it is closed.
var ErrMalformed = errors.New("malformed xenstore message")

// Marshal encodes m in the host byte order xenstored uses (little-endian
// on x86).
func (m Msg) Marshal() []byte {
	b := make([]byte, HeaderSize+len(m.Payload))
	binary.LittleEndian.PutUint32(b[0:], m.Type)
	binary.LittleEndian.PutUint32(b[4:], m.ReqID)
	binary.LittleEndian.PutUint32(b[8:], m.TxID)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(m.Payload)))
	copy(b[HeaderSize:], m.Payload)
	return b
}

// Decode decodes one message from the start of b. It returns the message
// and its encoded length, (Msg{}, 0, nil) if b holds only part of one, or
// an ErrMalformed error for a header announcing more than PayloadMax.
func Decode(b []byte) (Msg, int, error) {
	if len(b) < HeaderSize {
		return Msg{}, 0, nil
	}
	n := binary.LittleEndian.Uint32(b[12:])
	if n > PayloadMax {
		return Msg{}, 0, fmt.Errorf("%w: payload length %d exceeds %d", ErrMalformed, n, PayloadMax)
	}
	if len(b) < HeaderSize+int(n) {
		return Msg{}, 0, nil
	}
	m := Msg{
		Type:    binary.LittleEndian.Uint32(b[0:]),
		ReqID:   binary.LittleEndian.Uint32(b[4:]),
		TxID:    binary.LittleEndian.Uint32(b[8:]),
		Payload: append([]byte(nil), b[HeaderSize:HeaderSize+int(n)]...),
	}
	return m, HeaderSize + int(n), nil
}

// ReadMsg reads one message from r.
func ReadMsg(r io.Reader) (Msg, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Msg{}, err
	}
	n := binary.LittleEndian.Uint32(hdr[12:])
	if n > PayloadMax {
		return Msg{}, fmt.Errorf("%w: payload length %d exceeds %d", ErrMalformed, n, PayloadMax)
	}
	buf := make([]byte, HeaderSize+int(n))
	copy(buf, hdr[:])
	if _, err := io.ReadFull(r, buf[HeaderSize:]); err != nil {
		return Msg{}, fmt.Errorf("%w: truncated payload: %v", ErrMalformed, err)
	}
	m, _, err := Decode(buf)
	return m, err
}

// Error is a xenstore error reply: one of Xen's errno names (xsd_errors).
type Error string

// Xen's xenstore errors.
const (
	EINVAL    Error = "EINVAL"
	EACCES    Error = "EACCES"
	EEXIST    Error = "EEXIST"
	EISDIR    Error = "EISDIR"
	ENOENT    Error = "ENOENT"
	ENOMEM    Error = "ENOMEM"
	ENOSPC    Error = "ENOSPC"
	EIO       Error = "EIO"
	ENOTEMPTY Error = "ENOTEMPTY"
	ENOSYS    Error = "ENOSYS"
	EROFS     Error = "EROFS"
	EBUSY     Error = "EBUSY"
	EAGAIN    Error = "EAGAIN"
	EISCONN   Error = "EISCONN"
	E2BIG     Error = "E2BIG"
	EPERM     Error = "EPERM"
)

func (e Error) Error() string { return string(e) }
