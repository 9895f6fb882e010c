package zds

import (
	"errors"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeRequest: the request decoder never panics; every refusal has a
// sendable reason (non-empty, valid UTF-8, at most MaxReasonLen) and a
// sentinel; every accepted request is well formed and survives a round
// trip through the encoder; fd pairing agrees with the kind. Seeds beyond
// those below live in testdata/fuzz/FuzzDecodeRequest.
func FuzzDecodeRequest(f *testing.F) {
	for _, m := range [][]byte{
		mustMarshal(f, addMsg("8d2e5f1c-1b7a-4c2e-9f1e-0a6b3c9d7e21")),
		mustMarshal(f, keepMsg("k")),
		mustMarshal(f, delMsg("d")),
		mustMarshal(f, snapMsg()),
		{},
		{0xff},
		{0x22, 0x00},       // Istio's retired NoSnapshotPresent
		{0xca, 0x06, 0x00}, // unknown field 105
		{0x12, 0x03, 0x12, 0x01, 0xff},
	} {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, rerr := decodeRequest(b)
		if rerr != nil {
			if rerr.Reason == "" || !utf8.ValidString(rerr.Reason) || len(rerr.Reason) > MaxReasonLen {
				t.Fatalf("unsendable reason %q", rerr.Reason)
			}
			if !errors.Is(rerr, ErrMalformed) {
				t.Fatalf("refusal %v does not wrap ErrMalformed", rerr)
			}
			return
		}
		if r.Kind < KindAdd || r.Kind > KindSnapshotSent || r.Netns != nil {
			t.Fatalf("decoded %+v", r)
		}
		if (r.Kind == KindSnapshotSent) != (r.UID == "") {
			t.Fatalf("%s with uid %q", r.Kind, r.UID)
		}
		b2, err := encodeRequest(r)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", r, err)
		}
		r2, rerr := decodeRequest(b2)
		if rerr != nil || r2 != r {
			t.Fatalf("round trip: %+v became %+v, %v", r, r2, rerr)
		}
		_, must := r.Kind.takesFD()
		if rerr := checkFDs(&r, nil); (rerr != nil) != must || r.Netns != nil {
			t.Fatalf("%s without fd: %v", r.Kind, rerr)
		}
	})
}
