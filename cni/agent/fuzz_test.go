package agent

import (
	"strings"
	"testing"
)

// FuzzDecodeRequest: whatever the socket receives, decoding never panics,
// and what it accepts is a request the agent can act on.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"command":"ADD","containerID":"c","netns":"/var/run/netns/x","ifName":"eth0","podNamespace":"a","podName":"b","podUID":"u","ips":["10.0.0.1"]}`,
		`{"command":"DEL","podNamespace":"a","podName":"b"}`,
		`{"command":"CHECK","podNamespace":"a","podName":"b","ips":[]}`,
		`{"command":"ADD"}`, `{`, `null`, `[]`, `{"command":1}`, `{"command":"ADD","podNamespace":"a","podName":"b"}{"x":1}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := decodeRequest(strings.NewReader(body))
		if req == nil {
			t.Fatal("nil request")
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "malformed request: ") {
				t.Fatalf("error without the reason prefix: %v", err)
			}
			return
		}
		if req.PodNamespace == "" || req.PodName == "" {
			t.Fatalf("accepted a request without a pod: %+v", req)
		}
		switch req.Command {
		case "ADD", "DEL", "CHECK":
		default:
			t.Fatalf("accepted command %q", req.Command)
		}
	})
}
