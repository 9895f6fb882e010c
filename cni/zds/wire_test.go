package zds

import (
	"encoding/hex"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/strait-mesh/strait/cni/zds/zdspb"
)

// TestWireCompatibleWithIstio pins the bytes of each message. The field
// numbers are Istio ztunnel's (proto/zds.proto), so these are also the
// bytes Istio's agent sends and Istio's ztunnel expects.
func TestWireCompatibleWithIstio(t *testing.T) {
	info := WorkloadInfo{Name: "n", Namespace: "s", ServiceAccount: "a"}
	requests := []struct {
		req Request
		hex string
	}{
		// WorkloadRequest.add=1{uid=1, workload_info=2{name=1, namespace=2, service_account=3}}
		{Request{Kind: KindAdd, UID: "u", Info: info}, "0a0e" + "0a0175" + "1209" + "0a016e" + "120173" + "1a0161"},
		// WorkloadRequest.keep=5{uid=1}
		{Request{Kind: KindKeep, UID: "u"}, "2a03" + "0a0175"},
		// WorkloadRequest.del=2{uid=2}: Istio numbers DelWorkload.uid 2
		{Request{Kind: KindDel, UID: "u"}, "1203" + "120175"},
		// WorkloadRequest.snapshot_sent=3{}
		{Request{Kind: KindSnapshotSent}, "1a00"},
	}
	for _, tt := range requests {
		b, err := encodeRequest(tt.req)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(b); got != tt.hex {
			t.Errorf("%s encodes to %s, want %s", tt.req.Kind, got, tt.hex)
		}
		raw, _ := hex.DecodeString(tt.hex)
		got, rerr := decodeRequest(raw)
		if rerr != nil || got != tt.req {
			t.Errorf("%s decodes to %+v, %v; want %+v", tt.hex, got, rerr, tt.req)
		}
	}
	others := []struct {
		m   proto.Message
		hex string
	}{
		{&zdspb.ZdsHello{Version: Version}, "0801"},
		{&zdspb.WorkloadResponse{Payload: &zdspb.WorkloadResponse_Ack{Ack: &zdspb.Ack{}}}, "0a00"},
		{&zdspb.WorkloadResponse{Payload: &zdspb.WorkloadResponse_Ack{Ack: &zdspb.Ack{Error: "x"}}}, "0a03" + "0a0178"},
	}
	for _, tt := range others {
		if got := hex.EncodeToString(mustMarshal(t, tt.m)); got != tt.hex {
			t.Errorf("%v encodes to %s, want %s", tt.m, got, tt.hex)
		}
	}
}

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		name     string
		hex      string
		want     Request
		sentinel error
		reason   string
	}{
		{name: "add without workload_info", hex: "0a03" + "0a0175", want: Request{Kind: KindAdd, UID: "u"}},
		{
			name: "unknown fields inside a known payload are ignored",
			// AddWorkload{uid "u", field 9 varint 1}; WorkloadInfo{trust_domain(4) "td"}
			hex:  "0a0b" + "0a0175" + "4801" + "1204" + "2202" + "7464",
			want: Request{Kind: KindAdd, UID: "u"},
		},
		{name: "last oneof wins", hex: "1203120161" + "1a00", want: Request{Kind: KindSnapshotSent}},
		{name: "empty", hex: "", sentinel: ErrMalformed, reason: "malformed message: empty request"},
		{name: "truncated", hex: "0a05" + "0a01", sentinel: ErrMalformed, reason: "malformed message: proto: "},
		{name: "invalid UTF-8 uid", hex: "1203" + "1201ff", sentinel: ErrMalformed, reason: "invalid UTF-8"},
		{name: "unknown payloads", hex: "2200" + "3801", sentinel: ErrMalformed, reason: "unknown request payload (field 4, 7)"},
		{name: "keep with empty uid", hex: "2a00", sentinel: ErrMalformed, reason: "malformed message: keep with empty uid"},
		{name: "del with empty uid", hex: "1200", sentinel: ErrMalformed, reason: "malformed message: del with empty uid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := hex.DecodeString(tt.hex)
			if err != nil {
				t.Fatal(err)
			}
			got, rerr := decodeRequest(b)
			if tt.sentinel == nil {
				if rerr != nil || got != tt.want {
					t.Fatalf("got %+v, %v; want %+v", got, rerr, tt.want)
				}
				return
			}
			if rerr == nil || !errors.Is(rerr, tt.sentinel) || !strings.Contains(rerr.Reason, tt.reason) {
				t.Fatalf("got %+v, %v; want a refusal wrapping %v containing %q", got, rerr, tt.sentinel, tt.reason)
			}
			if strings.Contains(rerr.Reason, "\u00a0") {
				t.Errorf("reason %q keeps protobuf's no-break space", rerr.Reason)
			}
		})
	}
}

func TestParseRights(t *testing.T) {
	one := unix.UnixRights(7)
	two := unix.UnixRights(8, 9)
	creds := unix.UnixCredentials(&unix.Ucred{Pid: 1})
	all := slices.Concat(one, creds, two)
	tests := []struct {
		name string
		oob  []byte
		want []int
	}{
		{"none", nil, nil},
		{"one", one, []int{7}},
		{"several messages, credentials skipped", all, []int{7, 8, 9}},
		{"cut inside the last message", all[:len(all)-4], []int{7}},
		{"cut inside the last header", all[:len(one)+len(creds)+4], []int{7}},
		{"header claiming more than there is", func() []byte {
			b := slices.Clone(one)
			b[0] = 0xff // Len
			return b
		}(), nil},
		{"header claiming less than a header", func() []byte {
			b := slices.Clone(one)
			b[0] = 1
			return b
		}(), nil},
	}
	for _, tt := range tests {
		if got := parseRights(tt.oob); !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestCheckNetns(t *testing.T) {
	regular, err := os.CreateTemp(t.TempDir(), "f")
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	pr, _ := pipeFiles(t)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sockPath(t), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sock, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	tests := []struct {
		name string
		f    *os.File
		ok   bool
	}{
		{"host netns", openNS(t, "net"), true},
		{"mount namespace", openNS(t, "mnt"), false},
		{"pid namespace", openNS(t, "pid"), false},
		{"uts namespace", openNS(t, "uts"), false},
		{"regular file", regular, false},
		{"pipe", pr, false},
		{"socket", sock, false},
	}
	for _, tt := range tests {
		err := checkNetns(int(tt.f.Fd()))
		if (err == nil) != tt.ok {
			t.Errorf("%s: checkNetns = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestCleanReason(t *testing.T) {
	if got := cleanReason("a\xffb"); got != "a\uFFFDb" {
		t.Errorf("invalid UTF-8: %q", got)
	}
	long := strings.Repeat("é", MaxReasonLen) // 2 bytes a rune
	got := cleanReason("x" + long)
	if len(got) > MaxReasonLen || !utf8.ValidString(got) || len(got) < MaxReasonLen-3 {
		t.Errorf("long reason: %d bytes, valid=%v", len(got), utf8.ValidString(got))
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[RequestKind]string{KindAdd: "add", KindKeep: "keep", KindDel: "del", KindSnapshotSent: "snapshot-sent", 0: "kind(0)"} {
		if k.String() != want {
			t.Errorf("%d: %q, want %q", k, k.String(), want)
		}
	}
	if _, err := encodeRequest(Request{Kind: 9, UID: "u"}); err == nil {
		t.Error("encoded an unknown kind")
	}
}
