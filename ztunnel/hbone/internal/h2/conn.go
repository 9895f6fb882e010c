// Package h2 is a small HTTP/2 engine for CONNECT tunnels (HBONE).
//
// It speaks only what HBONE needs: streams opened by a HEADERS frame and
// carrying raw bytes in DATA frames, flow control, SETTINGS, PING, GOAWAY
// and RST_STREAM. There is no request/response body model, no trailers, no
// push and no priority. A Stream is a net.Conn-like full-duplex pipe.
//
// Design rules that keep it fast and deadlock-free:
//   - the read loop never blocks on a write: control frames it must send
//     (SETTINGS ack, PING ack, WINDOW_UPDATE, RST_STREAM) go to a per
//     connection control writer, so two peers writing bulk data at each
//     other cannot deadlock on full TCP buffers;
//   - stream writes go straight to the wire from the caller's goroutine
//     under the write lock, with no hand-off;
//   - received bytes are kept in pooled chunks; steady-state copying does
//     not allocate.
//
// The package uses golang.org/x/net/http2's Framer and hpack for the wire
// format, which are stable and fuzzed upstream.
package h2

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HBONE settings (HBONE.md): stream window 4 MiB, connection window
// 16 MiB, max frame 1 MiB, client ≤100 streams per connection, server
// allows 200, header list 16 KiB (client) / 64 KiB (server), PING every
// 10 s, close after 20 s without an ack.
const (
	DefaultStreamWindow         = 4 << 20
	DefaultConnWindow           = 16 << 20
	DefaultMaxFrameSize         = 1 << 20
	DefaultClientMaxStreams     = 100
	DefaultServerMaxStreams     = 200
	DefaultClientMaxHeaderList  = 16 << 10
	DefaultServerMaxHeaderList  = 64 << 10
	DefaultPingInterval         = 10 * time.Second
	DefaultPingTimeout          = 20 * time.Second
	initialWindow               = 65535
	maxWindow                   = 1<<31 - 1
	clientPreface               = http2.ClientPreface
	minChunk                    = 16 << 10
	defaultHeaderTableSize      = 4096
	goAwayWriteTimeout          = time.Second
	writeBufferSize             = 32 << 10
	maxPendingControlFrames     = 10000
	initialSettingsAckTolerance = 0
)

// goAwayLinger bounds how long a server keeps a drained connection open
// after its GOAWAY, waiting for the client to close it.
const goAwayLinger = time.Second

// Config tunes a connection. The zero value gives the HBONE defaults.
type Config struct {
	// MaxConcurrentStreams is, on a server, how many peer streams it
	// accepts at once (advertised in SETTINGS); on a client, how many
	// streams it opens at most (further capped by the server's SETTINGS).
	MaxConcurrentStreams uint32
	StreamWindow         uint32
	ConnWindow           uint32
	MaxFrameSize         uint32
	MaxHeaderListSize    uint32
	// PingInterval: send a PING when nothing was read for this long;
	// negative disables keepalive. PingTimeout: close the connection when
	// a PING is not acknowledged within it.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// IdleTimeout closes (GOAWAY) a connection that has had no stream for
	// this long. Zero means never.
	IdleTimeout time.Duration
	// OnStream is called, on its own goroutine, for each stream the peer
	// opens (servers only). The stream must eventually be closed.
	OnStream func(*Stream)
	Logger   *zap.Logger
}

func (c Config) populate(isClient bool) Config {
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = DefaultServerMaxStreams
		if isClient {
			c.MaxConcurrentStreams = DefaultClientMaxStreams
		}
	}
	if c.StreamWindow == 0 {
		c.StreamWindow = DefaultStreamWindow
	}
	if c.ConnWindow == 0 {
		c.ConnWindow = DefaultConnWindow
	}
	c.StreamWindow = min(c.StreamWindow, maxWindow)
	c.ConnWindow = max(min(c.ConnWindow, maxWindow), initialWindow)
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = DefaultMaxFrameSize
	}
	c.MaxFrameSize = min(max(c.MaxFrameSize, 16384), 1<<24-1)
	if c.MaxHeaderListSize == 0 {
		c.MaxHeaderListSize = DefaultServerMaxHeaderList
		if isClient {
			c.MaxHeaderListSize = DefaultClientMaxHeaderList
		}
	}
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.PingTimeout == 0 {
		c.PingTimeout = DefaultPingTimeout
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Conn is one HTTP/2 connection, client or server side.
type Conn struct {
	cfg      Config
	isClient bool
	nc       net.Conn
	fr       *http2.Framer
	log      *zap.Logger

	// wmu serializes frame writes, the hpack encoder and (client) the
	// order of new stream ids on the wire. Lock order: wmu before mu.
	wmu             sync.Mutex
	bw              *bufio.Writer // under the Framer; flushed before wmu is released
	henc            *hpack.Encoder
	hbuf            bytes.Buffer
	peerHeaderTable atomic.Uint32 // peer's SETTINGS_HEADER_TABLE_SIZE, applied under wmu
	peerMaxFrame    atomic.Uint32
	peerMaxHeaders  atomic.Uint32

	ctlMu      sync.Mutex
	ctl        []ctlFrame
	ctlSpare   []ctlFrame // the other half of a double buffer, so queueing does not allocate
	ctlPending atomic.Bool
	ctlWake    chan struct{}

	mu             sync.Mutex
	streams        map[uint32]*Stream
	nextStreamID   uint32 // client: next id to open
	lastPeerID     uint32 // server: highest stream id the peer opened
	reserved       int
	peerMaxStreams uint32
	peerInitWin    int32
	sendWin        int32
	recvWin        int32 // conn-level bytes the peer may still send
	recvUnacked    int32 // consumed but not yet returned by WINDOW_UPDATE
	goAwayRecv     *GoAwayError
	goAwaySent     bool
	closeErr       error
	idleSince      time.Time
	pingData       [8]byte
	pingSent       time.Time // zero when no PING is outstanding
	pingSeq        uint64
	drained        chan struct{} // closed when goAwaySent and no stream left

	lastRead  atomic.Int64 // unix nanos of the last frame read
	done      chan struct{}
	loops     sync.WaitGroup
	startOnce sync.Once
}

type ctlKind uint8

const (
	ctlSettingsAck ctlKind = iota
	ctlWindowUpdate
	ctlPing
	ctlPingAck
	ctlRST
	ctlGoAway
)

type ctlFrame struct {
	kind     ctlKind
	streamID uint32
	val      uint32
	code     http2.ErrCode
	data     [8]byte
}

// NewClientConn starts the client side of HTTP/2 on an established (TLS)
// connection: it writes the preface and settings and starts the loops.
func NewClientConn(nc net.Conn, cfg Config) (*Conn, error) {
	c := newConn(nc, cfg, true)
	c.nextStreamID = 1
	settings := []http2.Setting{
		{ID: http2.SettingEnablePush, Val: 0},
		{ID: http2.SettingInitialWindowSize, Val: c.cfg.StreamWindow},
		{ID: http2.SettingMaxFrameSize, Val: c.cfg.MaxFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: c.cfg.MaxHeaderListSize},
	}
	c.wmu.Lock()
	_, err := io.WriteString(c.bw, clientPreface)
	if err == nil {
		err = c.writeSettingsLocked(settings)
	}
	err = errors.Join(err, c.unlockWrite())
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("h2: client preface: %w", err)
	}
	c.Start()
	return c, nil
}

// NewServerConn does the server side of the handshake: it reads the
// client preface (the caller sets a deadline on nc for it) and writes
// settings. The caller then calls Start, after registering the connection
// wherever a concurrent shutdown must find it; no stream is served before.
// OnStream must be set.
func NewServerConn(nc net.Conn, cfg Config) (*Conn, error) {
	if cfg.OnStream == nil {
		return nil, errors.New("h2: server needs Config.OnStream")
	}
	c := newConn(nc, cfg, false)
	var preface [len(clientPreface)]byte
	if _, err := io.ReadFull(nc, preface[:]); err != nil {
		nc.Close()
		return nil, fmt.Errorf("h2: read client preface: %w", err)
	}
	if string(preface[:]) != clientPreface {
		nc.Close()
		return nil, fmt.Errorf("h2: bad client preface %q", preface[:])
	}
	settings := []http2.Setting{
		{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.MaxConcurrentStreams},
		{ID: http2.SettingInitialWindowSize, Val: c.cfg.StreamWindow},
		{ID: http2.SettingMaxFrameSize, Val: c.cfg.MaxFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: c.cfg.MaxHeaderListSize},
	}
	c.wmu.Lock()
	err := c.writeSettingsLocked(settings)
	err = errors.Join(err, c.unlockWrite())
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("h2: server settings: %w", err)
	}
	return c, nil
}

// Start begins serving a connection made by NewServerConn.
func (c *Conn) Start() {
	c.startOnce.Do(c.start)
}

func newConn(nc net.Conn, cfg Config, isClient bool) *Conn {
	cfg = cfg.populate(isClient)
	c := &Conn{
		cfg:            cfg,
		isClient:       isClient,
		nc:             nc,
		log:            cfg.Logger,
		ctlWake:        make(chan struct{}, 1),
		streams:        make(map[uint32]*Stream),
		peerMaxStreams: maxWindow, // unlimited until the peer's SETTINGS
		peerInitWin:    initialWindow,
		sendWin:        initialWindow,
		recvWin:        int32(cfg.ConnWindow),
		idleSince:      time.Now(),
		done:           make(chan struct{}),
		drained:        make(chan struct{}),
	}
	c.peerMaxFrame.Store(16384)
	c.peerMaxHeaders.Store(0) // 0 = no limit announced
	c.peerHeaderTable.Store(defaultHeaderTableSize)
	// Frames written in one wmu section (control frames, then headers or
	// data) leave in one TLS record and one syscall.
	c.bw = bufio.NewWriterSize(nc, writeBufferSize)
	c.fr = http2.NewFramer(c.bw, nc)
	c.fr.SetMaxReadFrameSize(cfg.MaxFrameSize)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(defaultHeaderTableSize, nil)
	c.fr.MaxHeaderListSize = cfg.MaxHeaderListSize
	c.fr.SetReuseFrames()
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.lastRead.Store(time.Now().UnixNano())
	return c
}

func (c *Conn) writeSettingsLocked(settings []http2.Setting) error {
	if err := c.fr.WriteSettings(settings...); err != nil {
		return err
	}
	if inc := c.cfg.ConnWindow - initialWindow; inc > 0 {
		return c.fr.WriteWindowUpdate(0, inc)
	}
	return nil
}

// unlockWrite flushes what the section wrote and releases wmu.
func (c *Conn) unlockWrite() error {
	var err error
	if c.bw.Buffered() > 0 {
		err = c.bw.Flush()
	}
	c.wmu.Unlock()
	return err
}

func (c *Conn) start() {
	c.loops.Add(3)
	go c.readLoop()
	go c.ctlLoop()
	go c.keepalive()
}

// Done is closed when the connection is closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection closed, or nil while it is open.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

// LocalAddr and RemoteAddr are the underlying connection's addresses.
func (c *Conn) LocalAddr() net.Addr  { return c.nc.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// NetConn is the underlying (TLS) connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// State is a snapshot for pools and metrics.
type State struct {
	Streams    int  // open streams plus reservations
	MaxStreams int  // current limit (ours and the peer's)
	Usable     bool // can take new streams (not closed, no GOAWAY)
	Idle       time.Duration
}

// State reports stream usage and whether new streams may be opened.
func (c *Conn) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := State{
		Streams:    len(c.streams) + c.reserved,
		MaxStreams: c.maxStreamsLocked(),
		Usable:     c.usableLocked(),
	}
	if st.Streams == 0 {
		st.Idle = time.Since(c.idleSince)
	}
	return st
}

func (c *Conn) maxStreamsLocked() int {
	return int(min(c.cfg.MaxConcurrentStreams, c.peerMaxStreams))
}

func (c *Conn) usableLocked() bool {
	return c.closeErr == nil && c.goAwayRecv == nil && !c.goAwaySent &&
		c.nextStreamID < maxWindow-2
}

// TryReserve reserves capacity for one new stream (clients). It returns
// false when the connection cannot take one. OpenStream consumes the
// reservation; Unreserve gives it back.
func (c *Conn) TryReserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.isClient || !c.usableLocked() || len(c.streams)+c.reserved >= c.maxStreamsLocked() {
		return false
	}
	c.reserved++
	return true
}

// Unreserve releases a reservation that will not be used.
func (c *Conn) Unreserve() {
	c.mu.Lock()
	if c.reserved > 0 {
		c.reserved--
		c.touchIdleLocked()
	}
	c.mu.Unlock()
}

// OpenStream opens a client stream with the given header fields (pseudo
// headers first) and consumes a reservation made by TryReserve. The
// response is read with Stream.AwaitResponse.
func (c *Conn) OpenStream(fields []hpack.HeaderField) (*Stream, error) {
	if !c.isClient {
		return nil, errors.New("h2: OpenStream on a server connection")
	}
	c.wmu.Lock()
	c.mu.Lock()
	if c.reserved > 0 {
		c.reserved--
	}
	if err := c.openErrLocked(); err != nil {
		c.touchIdleLocked()
		c.mu.Unlock()
		c.wmu.Unlock()
		return nil, err
	}
	id := c.nextStreamID
	c.nextStreamID += 2
	s := newStream(c, id)
	s.respReady = make(chan struct{})
	c.streams[id] = s
	c.mu.Unlock()

	block, err := c.encodeHeadersLocked(fields)
	if err == nil {
		err = c.writeHeadersLocked(id, block, false)
	}
	err = errors.Join(err, c.unlockWrite())
	if err != nil {
		c.closeWithError(fmt.Errorf("h2: write headers: %w", err))
		return nil, err
	}
	return s, nil
}

func (c *Conn) openErrLocked() error {
	switch {
	case c.closeErr != nil:
		return c.closeErr
	case c.goAwayRecv != nil:
		return c.goAwayRecv
	case c.goAwaySent || !c.usableLocked():
		return ErrNoCapacity
	case len(c.streams) >= c.maxStreamsLocked():
		return ErrNoCapacity
	}
	return nil
}

// encodeHeadersLocked hpack-encodes fields; wmu must be held.
func (c *Conn) encodeHeadersLocked(fields []hpack.HeaderField) ([]byte, error) {
	if v := c.peerHeaderTable.Load(); v != defaultHeaderTableSize {
		c.henc.SetMaxDynamicTableSizeLimit(v)
	}
	c.hbuf.Reset()
	var size uint32
	for _, f := range fields {
		size += f.Size()
		if err := c.henc.WriteField(f); err != nil {
			return nil, fmt.Errorf("h2: encode header %q: %w", f.Name, err)
		}
	}
	if limit := c.peerMaxHeaders.Load(); limit != 0 && size > limit {
		return nil, fmt.Errorf("h2: header list of %d bytes exceeds the peer's limit %d", size, limit)
	}
	return c.hbuf.Bytes(), nil
}

// writeHeadersLocked writes a header block as HEADERS plus CONTINUATION
// frames; wmu must be held.
func (c *Conn) writeHeadersLocked(id uint32, block []byte, endStream bool) error {
	c.writeCtlLocked()
	maxFrame := int(c.peerMaxFrame.Load())
	first := true
	for first || len(block) > 0 {
		frag := block
		if len(frag) > maxFrame {
			frag = frag[:maxFrame]
		}
		block = block[len(frag):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID:      id,
				BlockFragment: frag,
				EndStream:     endStream,
				EndHeaders:    len(block) == 0,
			})
			first = false
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeData writes one DATA frame (the caller reserved flow-control
// window for it) and any pending control frames first.
func (c *Conn) writeData(id uint32, p []byte, endStream bool) error {
	c.wmu.Lock()
	err := c.writeCtlLocked()
	if err == nil {
		err = c.fr.WriteData(id, endStream, p)
	}
	err = errors.Join(err, c.unlockWrite())
	if err != nil {
		err = fmt.Errorf("h2: write data: %w", err)
		c.closeWithError(err)
		return err
	}
	return nil
}

// queueCtl hands a control frame to the control writer. It never blocks,
// so the read loop can use it.
func (c *Conn) queueCtl(f ctlFrame) {
	c.ctlMu.Lock()
	if len(c.ctl) >= maxPendingControlFrames {
		// A peer that makes us queue this much (PING or SETTINGS flood
		// while not reading) is hostile.
		c.ctlMu.Unlock()
		go c.closeWithError(&ConnError{Code: http2.ErrCodeEnhanceYourCalm, Reason: "too many pending control frames"})
		return
	}
	c.ctl = append(c.ctl, f)
	c.ctlPending.Store(true)
	c.ctlMu.Unlock()
	select {
	case c.ctlWake <- struct{}{}:
	default:
	}
}

func (c *Conn) ctlLoop() {
	defer c.loops.Done()
	for {
		select {
		case <-c.done:
			return
		case <-c.ctlWake:
		}
		c.wmu.Lock()
		err := c.writeCtlLocked()
		err = errors.Join(err, c.unlockWrite())
		if err != nil {
			c.closeWithError(fmt.Errorf("h2: write control frame: %w", err))
			return
		}
	}
}

// writeCtlLocked writes pending control frames; wmu must be held.
func (c *Conn) writeCtlLocked() error {
	if !c.ctlPending.Load() {
		return nil
	}
	c.ctlMu.Lock()
	frames := c.ctl
	c.ctl = c.ctlSpare[:0]
	c.ctlSpare = nil // owned by this writer until handed back below
	c.ctlPending.Store(false)
	c.ctlMu.Unlock()
	defer func() {
		c.ctlMu.Lock()
		c.ctlSpare = frames[:0]
		c.ctlMu.Unlock()
	}()
	for _, f := range frames {
		var err error
		switch f.kind {
		case ctlSettingsAck:
			err = c.fr.WriteSettingsAck()
		case ctlWindowUpdate:
			err = c.fr.WriteWindowUpdate(f.streamID, f.val)
		case ctlPing:
			err = c.fr.WritePing(false, f.data)
		case ctlPingAck:
			err = c.fr.WritePing(true, f.data)
		case ctlRST:
			err = c.fr.WriteRSTStream(f.streamID, f.code)
		case ctlGoAway:
			err = c.fr.WriteGoAway(f.streamID, f.code, nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *Conn) readLoop() {
	defer c.loops.Done()
	err := c.readFrames()
	var ce *ConnError
	if errors.As(err, &ce) {
		c.log.Info("h2: closing connection on protocol error", zap.Stringer("peer", c.nc.RemoteAddr()), zap.Error(err))
		c.tryGoAway(ce.Code, ce.Reason)
	}
	c.closeWithError(err)
}

func (c *Conn) readFrames() error {
	first := true
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.onStreamError(se)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				reason := "malformed frame"
				if d := c.fr.ErrorDetail(); d != nil {
					reason = d.Error()
				}
				return &ConnError{Code: http2.ErrCode(ce), Reason: reason}
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return &ConnError{Code: http2.ErrCodeFrameSize, Reason: "frame larger than SETTINGS_MAX_FRAME_SIZE"}
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("h2: peer closed the connection: %w", net.ErrClosed)
			}
			return fmt.Errorf("h2: read: %w", err)
		}
		c.lastRead.Store(time.Now().UnixNano())
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return &ConnError{Code: http2.ErrCodeProtocol, Reason: "first frame is not SETTINGS"}
			}
			first = false
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			err = c.onSettings(f)
		case *http2.MetaHeadersFrame:
			err = c.onHeaders(f)
		case *http2.DataFrame:
			err = c.onData(f)
		case *http2.WindowUpdateFrame:
			err = c.onWindowUpdate(f)
		case *http2.PingFrame:
			c.onPing(f)
		case *http2.RSTStreamFrame:
			err = c.onRST(f)
		case *http2.GoAwayFrame:
			c.onGoAway(f)
		case *http2.PushPromiseFrame:
			err = &ConnError{Code: http2.ErrCodeProtocol, Reason: "PUSH_PROMISE is not allowed"}
		default:
			// PRIORITY and unknown frame types are ignored (RFC 9113 §4.1).
		}
		if err != nil {
			return err
		}
	}
}

// isPeerStreamID reports whether id belongs to the peer's id space.
func (c *Conn) isPeerStreamID(id uint32) bool { return (id%2 == 1) != c.isClient }

// seenLocked reports whether stream id was ever opened (now closed or not).
func (c *Conn) seenLocked(id uint32) bool {
	if c.isPeerStreamID(id) {
		return id <= c.lastPeerID
	}
	return id < c.nextStreamID
}

func (c *Conn) onStreamError(se http2.StreamError) {
	c.mu.Lock()
	if c.isPeerStreamID(se.StreamID) && se.StreamID > c.lastPeerID {
		c.lastPeerID = se.StreamID // malformed request opens then resets the stream
	}
	s := c.streams[se.StreamID]
	if s != nil {
		c.failStreamLocked(s, &StreamError{StreamID: se.StreamID, Code: se.Code})
	}
	c.mu.Unlock()
	c.log.Debug("h2: resetting stream", zap.Uint32("stream", se.StreamID), zap.Error(se))
	c.queueCtl(ctlFrame{kind: ctlRST, streamID: se.StreamID, code: se.Code})
}

func (c *Conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return &ConnError{Code: http2.ErrCode(ce), Reason: "invalid setting"}
		}
		return &ConnError{Code: http2.ErrCodeProtocol, Reason: err.Error()}
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - int64(c.peerInitWin)
			for _, st := range c.streams {
				if int64(st.sendWin)+delta > maxWindow {
					return &ConnError{Code: http2.ErrCodeFlowControl, Reason: "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window"}
				}
				st.sendWin += int32(delta)
			}
			c.peerInitWin = int32(s.Val)
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame.Store(s.Val)
		case http2.SettingMaxHeaderListSize:
			c.peerMaxHeaders.Store(s.Val)
		case http2.SettingHeaderTableSize:
			c.peerHeaderTable.Store(min(s.Val, defaultHeaderTableSize))
		case http2.SettingEnablePush:
			if !c.isClient || s.Val == 0 {
				return nil
			}
			return &ConnError{Code: http2.ErrCodeProtocol, Reason: "server sent SETTINGS_ENABLE_PUSH"}
		}
		return nil
	})
	c.wakeAllWritersLocked()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.queueCtl(ctlFrame{kind: ctlSettingsAck})
	return nil
}

func (c *Conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	s := c.streams[id]
	if s != nil {
		// Response headers (client) or trailers (either side).
		err := c.onHeadersExistingLocked(s, f)
		c.mu.Unlock()
		return err
	}
	if !c.isPeerStreamID(id) {
		seen := c.seenLocked(id)
		c.mu.Unlock()
		if seen {
			return nil // a stream we already closed
		}
		return &ConnError{Code: http2.ErrCodeProtocol, Reason: fmt.Sprintf("HEADERS on idle stream %d", id)}
	}
	if c.isClient {
		c.mu.Unlock()
		return &ConnError{Code: http2.ErrCodeProtocol, Reason: "server opened a stream"}
	}
	if id <= c.lastPeerID {
		c.mu.Unlock()
		return &ConnError{Code: http2.ErrCodeStreamClosed, Reason: fmt.Sprintf("HEADERS on closed stream %d", id)}
	}
	c.lastPeerID = id
	if c.goAwaySent || c.closeErr != nil || len(c.streams) >= int(c.cfg.MaxConcurrentStreams) {
		c.mu.Unlock()
		c.queueCtl(ctlFrame{kind: ctlRST, streamID: id, code: http2.ErrCodeRefusedStream})
		return nil
	}
	s = newStream(c, id)
	s.reqFields = f.Fields
	s.truncated = f.Truncated
	s.recvEnd = f.StreamEnded()
	c.streams[id] = s
	c.mu.Unlock()
	go c.cfg.OnStream(s)
	return nil
}

func (c *Conn) onHeadersExistingLocked(s *Stream, f *http2.MetaHeadersFrame) error {
	if c.isClient && !s.respDone {
		status := 0
		for _, hf := range f.PseudoFields() {
			if hf.Name == ":status" {
				status = parseStatus(hf.Value)
			}
		}
		if status < 100 || status > 999 {
			c.failStreamLocked(s, &StreamError{StreamID: s.id, Code: http2.ErrCodeProtocol})
			c.queueCtl(ctlFrame{kind: ctlRST, streamID: s.id, code: http2.ErrCodeProtocol})
			return nil
		}
		if status < 200 && !f.StreamEnded() {
			return nil // informational response; wait for the final one
		}
		s.status = status
		s.respFields = f.RegularFields()
		s.respDone = true
		close(s.respReady)
	} else if !f.StreamEnded() {
		// Trailers must end the stream; anything else is malformed.
		c.failStreamLocked(s, &StreamError{StreamID: s.id, Code: http2.ErrCodeProtocol})
		c.queueCtl(ctlFrame{kind: ctlRST, streamID: s.id, code: http2.ErrCodeProtocol})
		return nil
	}
	if f.StreamEnded() {
		if s.recvEnd {
			return &ConnError{Code: http2.ErrCodeStreamClosed, Reason: "HEADERS after END_STREAM"}
		}
		s.recvEnd = true
		s.signalRead()
		c.maybeRemoveLocked(s)
	}
	return nil
}

func parseStatus(v string) int {
	if len(v) != 3 {
		return 0
	}
	n := 0
	for i := 0; i < 3; i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0
		}
		n = n*10 + int(v[i]-'0')
	}
	return n
}

func (c *Conn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	data := f.Data()
	flow := int32(f.Length) // includes padding
	c.mu.Lock()
	if flow > c.recvWin {
		c.mu.Unlock()
		return &ConnError{Code: http2.ErrCodeFlowControl, Reason: "peer exceeded the connection window"}
	}
	c.recvWin -= flow
	s := c.streams[id]
	if s == nil || s.recvEnd || s.closedLocal {
		seen := c.seenLocked(id)
		c.recvUnacked += flow // nobody will read it: give the window back
		wu := c.connWindowUpdateLocked()
		ended := s != nil && s.recvEnd
		c.mu.Unlock()
		c.sendWindowUpdates(0, 0, wu)
		if !seen {
			return &ConnError{Code: http2.ErrCodeProtocol, Reason: fmt.Sprintf("DATA on idle stream %d", id)}
		}
		if ended {
			c.queueCtl(ctlFrame{kind: ctlRST, streamID: id, code: http2.ErrCodeStreamClosed})
		}
		return nil
	}
	if flow > s.recvWin {
		c.recvUnacked += flow
		c.failStreamLocked(s, &StreamError{StreamID: id, Code: http2.ErrCodeFlowControl})
		wu := c.connWindowUpdateLocked()
		c.mu.Unlock()
		c.queueCtl(ctlFrame{kind: ctlRST, streamID: id, code: http2.ErrCodeFlowControl})
		c.sendWindowUpdates(0, 0, wu)
		return nil
	}
	s.recvWin -= flow
	var swu, cwu uint32
	if pad := flow - int32(len(data)); pad > 0 {
		swu, cwu = s.consumedLocked(int(pad))
	}
	if len(data) > 0 {
		s.appendLocked(data)
	}
	if f.StreamEnded() {
		s.recvEnd = true
		c.maybeRemoveLocked(s)
	}
	s.signalRead()
	c.mu.Unlock()
	c.sendWindowUpdates(id, swu, cwu)
	return nil
}

// connWindowUpdateLocked returns the connection-level increment to send
// now, if enough was consumed.
func (c *Conn) connWindowUpdateLocked() uint32 {
	if c.recvUnacked < int32(c.cfg.ConnWindow/4) {
		return 0
	}
	inc := c.recvUnacked
	c.recvUnacked = 0
	c.recvWin += inc
	return uint32(inc)
}

func (c *Conn) sendWindowUpdates(id, streamInc, connInc uint32) {
	if streamInc > 0 {
		c.queueCtl(ctlFrame{kind: ctlWindowUpdate, streamID: id, val: streamInc})
	}
	if connInc > 0 {
		c.queueCtl(ctlFrame{kind: ctlWindowUpdate, val: connInc})
	}
}

func (c *Conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		if int64(c.sendWin)+int64(f.Increment) > maxWindow {
			return &ConnError{Code: http2.ErrCodeFlowControl, Reason: "connection window overflow"}
		}
		c.sendWin += int32(f.Increment)
		c.wakeAllWritersLocked()
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		if !c.seenLocked(f.StreamID) {
			return &ConnError{Code: http2.ErrCodeProtocol, Reason: fmt.Sprintf("WINDOW_UPDATE on idle stream %d", f.StreamID)}
		}
		return nil
	}
	if int64(s.sendWin)+int64(f.Increment) > maxWindow {
		c.failStreamLocked(s, &StreamError{StreamID: s.id, Code: http2.ErrCodeFlowControl})
		c.queueCtl(ctlFrame{kind: ctlRST, streamID: s.id, code: http2.ErrCodeFlowControl})
		return nil
	}
	s.sendWin += int32(f.Increment)
	s.signalWrite()
	return nil
}

func (c *Conn) wakeAllWritersLocked() {
	for _, s := range c.streams {
		s.signalWrite()
	}
}

func (c *Conn) onPing(f *http2.PingFrame) {
	if !f.IsAck() {
		c.queueCtl(ctlFrame{kind: ctlPingAck, data: f.Data})
		return
	}
	c.mu.Lock()
	if !c.pingSent.IsZero() && f.Data == c.pingData {
		c.pingSent = time.Time{}
	}
	c.mu.Unlock()
}

func (c *Conn) onRST(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		if !c.seenLocked(f.StreamID) {
			return &ConnError{Code: http2.ErrCodeProtocol, Reason: fmt.Sprintf("RST_STREAM on idle stream %d", f.StreamID)}
		}
		return nil
	}
	c.failStreamLocked(s, &StreamError{StreamID: s.id, Code: f.ErrCode, Remote: true})
	return nil
}

func (c *Conn) onGoAway(f *http2.GoAwayFrame) {
	ga := &GoAwayError{LastStreamID: f.LastStreamID, Code: f.ErrCode, Debug: string(f.DebugData())}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.goAwayRecv == nil || f.LastStreamID < c.goAwayRecv.LastStreamID {
		c.goAwayRecv = ga
	}
	for id, s := range c.streams {
		if !c.isPeerStreamID(id) && id > f.LastStreamID {
			c.failStreamLocked(s, ga) // never processed: the caller may retry elsewhere
		}
	}
	c.checkDrainedLocked()
}

// GoAway sends GOAWAY once, without waiting: streams the peer opened up
// to now are served, later ones refused (the peer retries them on another
// connection). Called before Start it refuses every stream. Shutdown
// calls it, then waits for the streams to finish.
func (c *Conn) GoAway() {
	c.mu.Lock()
	first := !c.goAwaySent
	c.goAwaySent = true
	last := c.lastPeerID
	c.checkDrainedLocked()
	c.mu.Unlock()
	if first {
		c.queueCtl(ctlFrame{kind: ctlGoAway, streamID: last, code: http2.ErrCodeNo})
	}
}

// Shutdown sends GOAWAY, refuses new streams, waits until the open streams
// end or ctx is done, then closes the connection.
func (c *Conn) Shutdown(ctx context.Context) error {
	c.GoAway()
	var err error
	select {
	case <-c.drained:
		if !c.isClient {
			// A client may have opened streams before it read the
			// GOAWAY. Closing now would reset them in flight (the peer
			// cannot tell whether they were processed); left open, they
			// are refused (onHeaders) and the client retries them on
			// another connection. The client closes once it has seen the
			// GOAWAY and its streams are done.
			t := time.NewTimer(goAwayLinger)
			select {
			case <-c.done:
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
	case <-c.done:
	case <-ctx.Done():
		err = fmt.Errorf("h2: shutdown with streams still open: %w", ctx.Err())
	}
	// Let the control writer flush the GOAWAY before the socket goes.
	c.wmu.Lock()
	c.writeCtlLocked()
	c.unlockWrite()
	c.closeWithError(ErrConnClosed)
	return err
}

func (c *Conn) checkDrainedLocked() {
	if (c.goAwaySent || c.goAwayRecv != nil) && len(c.streams) == 0 && c.reserved == 0 && !isClosed(c.drained) {
		close(c.drained)
	}
}

// Drained is closed once a GOAWAY was sent or received and no stream is
// left, i.e. when the connection can be closed without losing anything.
func (c *Conn) Drained() <-chan struct{} { return c.drained }

// tryGoAway writes a GOAWAY if the write lock is free; it is used on the
// way out after a protocol error, where blocking would be worse than
// skipping the courtesy.
func (c *Conn) tryGoAway(code http2.ErrCode, reason string) {
	if !c.wmu.TryLock() {
		return
	}
	defer c.unlockWrite()
	c.mu.Lock()
	last := c.lastPeerID
	c.mu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(goAwayWriteTimeout))
	_ = c.fr.WriteGoAway(last, code, []byte(reason))
}

// Close closes the connection at once; open streams fail.
func (c *Conn) Close() error {
	c.closeWithError(ErrConnClosed)
	return nil
}

func (c *Conn) closeWithError(err error) {
	if err == nil {
		err = ErrConnClosed
	}
	c.mu.Lock()
	if c.closeErr != nil {
		c.mu.Unlock()
		return
	}
	c.closeErr = err
	close(c.done)
	for _, s := range c.streams {
		c.failStreamLocked(s, err)
	}
	c.mu.Unlock()
	c.nc.Close()
}

// Wait blocks until the connection's goroutines have exited (after Close).
func (c *Conn) Wait() { c.loops.Wait() }

func (c *Conn) keepalive() {
	defer c.loops.Done()
	tick := c.cfg.IdleTimeout / 2
	if c.cfg.PingInterval > 0 {
		tick = min(c.cfg.PingInterval, c.cfg.PingTimeout) / 2
		if c.cfg.IdleTimeout > 0 {
			tick = min(tick, c.cfg.IdleTimeout/2)
		}
	}
	if tick <= 0 {
		return
	}
	tick = max(tick, 10*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			if err := c.keepaliveTick(now); err != nil {
				c.log.Info("h2: closing connection", zap.Stringer("peer", c.nc.RemoteAddr()), zap.Error(err))
				c.closeWithError(err)
				return
			}
		}
	}
}

// ErrPingTimeout closes a connection whose peer stopped answering PINGs.
var ErrPingTimeout = errors.New("h2: no PING ack from peer within the timeout")

func (c *Conn) keepaliveTick(now time.Time) error {
	c.mu.Lock()
	if !c.pingSent.IsZero() && now.Sub(c.pingSent) > c.cfg.PingTimeout {
		c.mu.Unlock()
		return ErrPingTimeout
	}
	var ping *ctlFrame
	if c.cfg.PingInterval > 0 && c.pingSent.IsZero() &&
		now.Sub(time.Unix(0, c.lastRead.Load())) >= c.cfg.PingInterval {
		c.pingSeq++
		for i := range c.pingData {
			c.pingData[i] = byte(c.pingSeq >> (8 * i))
		}
		c.pingSent = now
		ping = &ctlFrame{kind: ctlPing, data: c.pingData}
	}
	idle := c.cfg.IdleTimeout > 0 && len(c.streams) == 0 && c.reserved == 0 &&
		now.Sub(c.idleSince) >= c.cfg.IdleTimeout
	c.mu.Unlock()
	if ping != nil {
		c.queueCtl(*ping)
	}
	if idle {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = c.Shutdown(ctx)
		}()
	}
	return nil
}

func (c *Conn) touchIdleLocked() {
	if len(c.streams) == 0 && c.reserved == 0 {
		c.idleSince = time.Now()
	}
	c.checkDrainedLocked()
}

// maybeRemoveLocked forgets a stream once both directions are finished.
func (c *Conn) maybeRemoveLocked(s *Stream) {
	if s.removed {
		return
	}
	if s.err == nil && !(s.sentEnd && s.recvEnd) && !s.closedLocal {
		return
	}
	s.removed = true
	delete(c.streams, s.id)
	// Bytes still buffered will never be read through this stream (or will
	// be read without WINDOW_UPDATE): return them to the connection window.
	c.touchIdleLocked()
}

// failStreamLocked ends s with err (reset or connection failure).
func (c *Conn) failStreamLocked(s *Stream, err error) {
	if s.err == nil {
		s.err = err
	}
	if s.respReady != nil && !s.respDone {
		s.respDone = true
		close(s.respReady)
	}
	s.signalRead()
	s.signalWrite()
	c.maybeRemoveLocked(s)
}
