package zds

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/strait-mesh/strait/cni/zds/zdspb"
)

const (
	// DefaultSocketPath is where the node agent listens and ztunnel dials.
	DefaultSocketPath = "/var/run/strait/ztunnel.sock"
	// MaxMessageSize bounds one packet (one protobuf message) either way.
	MaxMessageSize = 64 << 10
	// Version is the protocol version this package speaks and announces.
	Version = zdspb.Version_VERSION_V1
	// DefaultTimeout bounds the hello, each ack wait and each write.
	DefaultTimeout = 5 * time.Second

	// fdRoom is how many fds the receive buffer has room for. One is legal;
	// the rest is room to count, close and report extra fds. More than this
	// in one message comes back as MSG_CTRUNC (the kernel closes the
	// overflow; we close the rest).
	fdRoom = 16
)

// RequestKind says which WorkloadRequest payload a Request carries.
type RequestKind uint8

// The request kinds, one per WorkloadRequest payload.
const (
	KindAdd RequestKind = iota + 1
	KindKeep
	KindDel
	KindSnapshotSent
)

func (k RequestKind) String() string {
	switch k {
	case KindAdd:
		return "add"
	case KindKeep:
		return "keep"
	case KindDel:
		return "del"
	case KindSnapshotSent:
		return "snapshot-sent"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// WorkloadInfo names the pod behind a uid (AddWorkload only).
type WorkloadInfo struct {
	Name           string
	Namespace      string
	ServiceAccount string
}

// Request is one decoded agent → ztunnel request.
type Request struct {
	Kind RequestKind
	// UID is the pod uid; empty only for KindSnapshotSent.
	UID string
	// Info is set for KindAdd (zero if the agent sent none).
	Info WorkloadInfo
	// Netns is the pod's network namespace, already checked to be one: always
	// set for KindAdd, set for KindKeep when the agent sent one, nil
	// otherwise. The receiver owns it and must close it.
	Netns *os.File
}

// Close closes r.Netns if set; a convenience for receivers that do not keep
// it.
func (r *Request) Close() error {
	if r.Netns == nil {
		return nil
	}
	err := r.Netns.Close()
	r.Netns = nil
	return err
}

// takesFD reports whether an fd may travel with the kind, and whether it
// must.
func (k RequestKind) takesFD() (may, must bool) {
	switch k {
	case KindAdd:
		return true, true
	case KindKeep:
		return true, false
	}
	return false, false
}

// encodeRequest marshals r (its Netns is not looked at).
func encodeRequest(r Request) ([]byte, error) {
	m := &zdspb.WorkloadRequest{}
	switch r.Kind {
	case KindAdd:
		m.Payload = &zdspb.WorkloadRequest_Add{Add: &zdspb.AddWorkload{
			Uid: r.UID,
			WorkloadInfo: &zdspb.WorkloadInfo{
				Name:           r.Info.Name,
				Namespace:      r.Info.Namespace,
				ServiceAccount: r.Info.ServiceAccount,
			},
		}}
	case KindKeep:
		m.Payload = &zdspb.WorkloadRequest_Keep{Keep: &zdspb.KeepWorkload{Uid: r.UID}}
	case KindDel:
		m.Payload = &zdspb.WorkloadRequest_Del{Del: &zdspb.DelWorkload{Uid: r.UID}}
	case KindSnapshotSent:
		m.Payload = &zdspb.WorkloadRequest_SnapshotSent{SnapshotSent: &zdspb.SnapshotSent{}}
	default:
		return nil, fmt.Errorf("zds: encode: unknown request kind %d", r.Kind)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("zds: encode %s: %w", r.Kind, err)
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w: %s request is %d bytes, max %d", ErrMessageTooLarge, r.Kind, len(b), MaxMessageSize)
	}
	return b, nil
}

// decodeRequest parses one request packet's bytes (fds are paired later by
// checkFDs). It never panics; every refusal is a *RequestError whose Reason
// is fit to send in a nack.
func decodeRequest(b []byte) (Request, *RequestError) {
	if len(b) == 0 {
		return Request{}, refuse(ErrMalformed, "empty request")
	}
	var m zdspb.WorkloadRequest
	if err := proto.Unmarshal(b, &m); err != nil {
		// protobuf puts a no-break space in its errors; a nack reads better
		// with a plain one.
		return Request{}, refuse(ErrMalformed, strings.ReplaceAll(err.Error(), "\u00a0", " "))
	}
	var r Request
	switch p := m.Payload.(type) {
	case *zdspb.WorkloadRequest_Add:
		r.Kind, r.UID = KindAdd, p.Add.GetUid()
		if wi := p.Add.GetWorkloadInfo(); wi != nil {
			r.Info = WorkloadInfo{Name: wi.GetName(), Namespace: wi.GetNamespace(), ServiceAccount: wi.GetServiceAccount()}
		}
	case *zdspb.WorkloadRequest_Keep:
		r.Kind, r.UID = KindKeep, p.Keep.GetUid()
	case *zdspb.WorkloadRequest_Del:
		r.Kind, r.UID = KindDel, p.Del.GetUid()
	case *zdspb.WorkloadRequest_SnapshotSent:
		r.Kind = KindSnapshotSent
	default:
		return Request{}, refuse(ErrMalformed, unknownPayload(m.ProtoReflect().GetUnknown()))
	}
	if r.Kind != KindSnapshotSent && r.UID == "" {
		return Request{}, refuse(ErrMalformed, r.Kind.String()+" with empty uid")
	}
	return r, nil
}

// unknownPayload describes a request with no payload this version knows:
// the field numbers present, if any.
func unknownPayload(raw []byte) string {
	var nums []string
	for len(raw) > 0 {
		num, _, n := protowire.ConsumeField(raw)
		if n < 0 {
			break
		}
		nums = append(nums, strconv.Itoa(int(num)))
		raw = raw[n:]
	}
	if len(nums) == 0 {
		return "request without payload"
	}
	return "unknown request payload (field " + strings.Join(nums, ", ") + ")"
}

// checkFDs pairs a decoded request with the fds that came with it. On
// success the fd (if any) now belongs to r.Netns; on refusal every fd has
// been closed.
func checkFDs(r *Request, fds []int) *RequestError {
	may, must := r.Kind.takesFD()
	switch {
	case len(fds) > 1:
		closeFDs(fds)
		return refuse(ErrTooManyFDs, fmt.Sprintf("got %d", len(fds)))
	case len(fds) == 1 && !may:
		closeFDs(fds)
		return refuse(ErrUnexpectedFD, "on "+r.Kind.String())
	case len(fds) == 0 && must:
		return refuse(ErrNoNetns, "")
	case len(fds) == 0:
		return nil
	}
	if err := checkNetns(fds[0]); err != nil {
		closeFDs(fds)
		return refuse(ErrNotNetns, err.Error())
	}
	r.Netns = os.NewFile(uintptr(fds[0]), "netns:"+r.UID)
	return nil
}

// parseRights returns every fd carried by SCM_RIGHTS in oob. It is
// deliberately lenient (it never fails, and stops at the first malformed
// header) because its job is to find every fd the kernel installed so none
// leaks, even when the control data was truncated.
func parseRights(oob []byte) []int {
	var fds []int
	hdr := unix.CmsgLen(0)
	for len(oob) >= unix.SizeofCmsghdr {
		var h unix.Cmsghdr
		if _, err := binary.Decode(oob[:unix.SizeofCmsghdr], binary.NativeEndian, &h); err != nil {
			break
		}
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			// Never guess past a header that does not fit: its padding
			// would read as fd 0. The kernel writes consistent headers,
			// even under MSG_CTRUNC (it shortens cmsg_len to the fds it
			// installed), so only a foreign buffer gets here.
			break
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			for d := oob[hdr:l]; len(d) >= 4; d = d[4:] {
				fds = append(fds, int(int32(binary.NativeEndian.Uint32(d))))
			}
		}
		next := unix.CmsgSpace(l - hdr)
		if next >= len(oob) {
			break
		}
		oob = oob[next:]
	}
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// packet is one received packet.
type packet struct {
	data  []byte
	fds   []int // installed by the kernel; owned by whoever holds the packet
	flags int   // recvmsg flags (MSG_TRUNC, MSG_CTRUNC)
}

// check returns the transport-level problem with p, if any: a packet the
// kernel truncated. It does not close fds.
func (p *packet) check() *RequestError {
	if p.flags&unix.MSG_TRUNC != 0 {
		return refuse(ErrMessageTooLarge, fmt.Sprintf("over %d bytes", MaxMessageSize))
	}
	if p.flags&unix.MSG_CTRUNC != 0 {
		return refuse(ErrControlTruncated, fmt.Sprintf("more than %d fds or foreign control messages", fdRoom))
	}
	return nil
}

// pconn is a SOCK_SEQPACKET unix connection whose blocking calls honour a
// context and a timeout.
type pconn struct {
	uc  *net.UnixConn
	buf []byte // MaxMessageSize: a longer packet comes back with MSG_TRUNC
	oob []byte
}

func newPconn(uc *net.UnixConn) *pconn {
	return &pconn{uc: uc, buf: make([]byte, MaxMessageSize), oob: make([]byte, unix.CmsgSpace(fdRoom*4))}
}

// aLongTimeAgo is a deadline that has passed: setting it wakes a blocked
// read or write at once.
var aLongTimeAgo = time.Unix(1, 0)

// deadline arms set (SetReadDeadline or SetWriteDeadline) with the earlier
// of ctx's deadline and now+timeout (timeout 0: none), and makes ctx's
// cancellation wake the call. The returned func disarms it.
func deadline(ctx context.Context, timeout time.Duration, set func(time.Time) error) (disarm func()) {
	var d time.Time
	if timeout > 0 {
		d = time.Now().Add(timeout)
	}
	if cd, ok := ctx.Deadline(); ok && (d.IsZero() || cd.Before(d)) {
		d = cd
	}
	_ = set(d)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = set(aLongTimeAgo)
		close(fired)
	})
	return func() {
		if !stop() {
			<-fired // the wake-up ran (or is running): let it finish first
		}
	}
}

// ctxErr is ctx.Err(), also reporting DeadlineExceeded a hair early, when
// the socket deadline (set from ctx's) fired before ctx's own timer.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// ioError turns a read/write error into this package's error. The
// *net.OpError layer is dropped: it names the socket by the temporary path
// Listen bound it under, which only confuses.
func ioError(ctx context.Context, op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
		return wrap(ErrPeerClosed, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, os.ErrDeadlineExceeded):
		if cerr := ctxErr(ctx); cerr != nil {
			return fmt.Errorf("zds: %s: %w", op, cerr)
		}
		return fmt.Errorf("zds: %s: timed out: %w", op, err)
	}
	return fmt.Errorf("zds: %s: %w", op, err)
}

// read receives one packet. A clean EOF is ErrPeerClosed. Whatever fds the
// kernel installed are returned in the packet, even alongside an error for
// a zero-length packet, and must be closed by the caller.
func (c *pconn) read(ctx context.Context, timeout time.Duration, op string) (packet, error) {
	if err := ctx.Err(); err != nil {
		return packet{}, fmt.Errorf("zds: %s: %w", op, err)
	}
	disarm := deadline(ctx, timeout, c.uc.SetReadDeadline)
	n, oobn, flags, _, err := c.uc.ReadMsgUnix(c.buf, c.oob)
	disarm()
	var p packet
	if oobn > 0 && oobn <= len(c.oob) {
		p.fds = parseRights(c.oob[:oobn])
	}
	if err != nil {
		if errors.Is(err, io.EOF) && (len(p.fds) > 0 || flags&unix.MSG_CTRUNC != 0) {
			// A zero-length packet that carried fds: a message, not EOF.
			p.flags = flags
			return p, nil
		}
		return p, ioError(ctx, op, err)
	}
	p.data, p.flags = c.buf[:n], flags
	return p, nil
}

// write sends one packet, with the fd of f (if not nil) as SCM_RIGHTS. f
// stays the caller's: the kernel passes a duplicate. tried reports whether
// the socket was written to (or attempted): if not, nothing can have
// reached the peer.
func (c *pconn) write(ctx context.Context, timeout time.Duration, op string, b []byte, f *os.File) (tried bool, err error) {
	if len(b) > MaxMessageSize {
		return false, fmt.Errorf("%w: %s is %d bytes, max %d", ErrMessageTooLarge, op, len(b), MaxMessageSize)
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("zds: %s: %w", op, err)
	}
	var rc syscall.RawConn
	if f != nil {
		if rc, err = f.SyscallConn(); err != nil {
			return false, fmt.Errorf("zds: %s: netns file: %w", op, err)
		}
	}
	disarm := deadline(ctx, timeout, c.uc.SetWriteDeadline)
	defer disarm()
	var werr error
	if rc == nil {
		_, _, werr = c.uc.WriteMsgUnix(b, nil, nil)
	} else if err := rc.Control(func(fd uintptr) {
		// Control holds f's fd open (and valid) while it is sent.
		tried = true
		_, _, werr = c.uc.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return false, fmt.Errorf("zds: %s: netns file: %w", op, err)
	}
	if werr != nil {
		return true, ioError(ctx, op, werr)
	}
	return true, nil
}

// discard closes the fds of a packet that is being thrown away.
func (p *packet) discard() {
	closeFDs(p.fds)
	p.fds = nil
}
