package hbone

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{
		"10.0.0.1:80", "[fd00::1]:15008", "svc.ns.svc.cluster.local:8080", "127.0.0.1:65535",
		"10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", ":80", "[::1]", "fd00::1:80", "a..b:1",
		"-a.b:1", "host:+80", "host:080", "[10.0.0.1]:80", "[fe80::1%eth0]:80", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAuthority(s)
		if err != nil {
			return
		}
		if a.Port == 0 {
			t.Fatalf("%q: accepted port 0", s)
		}
		if a.IsIP() != (a.Addr.IsValid()) || (a.IsIP() && a.Addr.Port() != a.Port) {
			t.Fatalf("%q: inconsistent %+v", s, a)
		}
		// What we accept re-parses to the same thing.
		b, err := ParseAuthority(net.JoinHostPort(a.Host, strconv.Itoa(int(a.Port))))
		if err != nil || b != a {
			t.Fatalf("%q: round trip gave %+v, %v (first %+v)", s, b, err, a)
		}
	})
}

// frames builds a byte string of HTTP/2 frames for the fuzz seeds.
func frames(build func(fr *http2.Framer, enc func(...string) []byte)) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	var hb bytes.Buffer
	he := hpack.NewEncoder(&hb)
	enc := func(kv ...string) []byte {
		hb.Reset()
		for i := 0; i+1 < len(kv); i += 2 {
			he.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return append([]byte(nil), hb.Bytes()...)
	}
	build(fr, enc)
	return buf.Bytes()
}

// FuzzServerFrames feeds arbitrary bytes to a real HBONE server after a
// valid mTLS handshake, preface and SETTINGS. Whatever arrives, the server
// must not panic, must release the connection and its streams, and must
// keep serving a well-behaved client.
func FuzzServerFrames(f *testing.F) {
	authority := "127.0.0.1:1" // rewritten per run to the echo port
	seeds := [][]byte{
		frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":method", "CONNECT", ":authority", authority), EndHeaders: true})
			fr.WriteData(1, false, []byte("hello"))
			fr.WriteData(1, true, nil)
		}),
		frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":method", "CONNECT", ":authority", authority), EndHeaders: false})
			fr.WriteContinuation(1, true, enc("forwarded", "for=1.2.3.4"))
			fr.WriteRSTStream(1, http2.ErrCodeCancel)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(":method", "GET", ":path", "/", ":scheme", "https", ":authority", authority), EndHeaders: true, EndStream: true})
		}),
		frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteWindowUpdate(0, 1<<30)
			fr.WriteWindowUpdate(0, 1<<30) // overflow
			fr.WritePing(false, [8]byte{1})
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
		}),
		frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteData(5, false, []byte("data on an idle stream"))
		}),
		frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: enc(":method", "CONNECT", ":authority", authority), EndHeaders: true})
		}),
		frames(func(fr *http2.Framer, enc func(...string) []byte) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":method", "CONNECT", ":authority", authority), EndHeaders: true})
			fr.WriteData(1, false, bytes.Repeat([]byte{'x'}, 70000)) // over the peer's frame size? no: over our 16K default read size is fine, 1 MiB max
			fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		}),
		{0, 0, 0, 0xff, 0, 0, 0, 0, 0}, // unknown frame type
		{0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1},
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	fx := newFixture(f, func(c *ServerConfig) { c.HandshakeTimeout = 2 * time.Second })
	authority = "127.0.0.1:" + portOf(fx.echo.addr())
	cfg := fx.ca.ClientTLS(f, "ns-a", "sa-a", fx.ca.ID("ns-b", "sa-b"))
	healthy := fx.client(f, "ns-a", "sa-a")
	drainResults := func() {
		for {
			select {
			case <-fx.results:
			default:
				return
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		defer drainResults()
		baseConns := fx.srv.Stats().ActiveConns // the healthy client's pooled connection
		tc, err := tls.Dial("tcp", fx.addr.String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		var pre bytes.Buffer
		pre.WriteString(http2.ClientPreface)
		http2.NewFramer(&pre, nil).WriteSettings()
		tc.Write(pre.Bytes())
		tc.Write(bytes.ReplaceAll(data, []byte("127.0.0.1:1"), []byte(authority)))
		tc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		io.Copy(io.Discard, tc)
		tc.Close()
		// No connection or stream may outlive its TCP connection.
		deadline := time.Now().Add(5 * time.Second)
		for st := fx.srv.Stats(); st.ActiveConns != baseConns || st.ActiveStreams != 0; st = fx.srv.Stats() {
			if time.Now().After(deadline) {
				t.Fatalf("server still holds %d conns (baseline %d), %d streams after the hostile peer left", st.ActiveConns, baseConns, st.ActiveStreams)
			}
			time.Sleep(time.Millisecond)
		}
		conn, err := healthy.Dial(ctxT(t), fx.request())
		if err != nil {
			t.Fatalf("healthy client refused after hostile input: %v", err)
		}
		echoRoundTrip(t, conn, 64)
		conn.Close()
	})
}
