package agent

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/strait-mesh/strait/cni/plugin"
)

// Malformed plugin requests get a 400 with the reason, before the agent
// looks at any pod.
func TestServeCNIRefusesMalformed(t *testing.T) {
	a := &Agent{log: zap.NewNop(), m: NewMetrics(nil), ready: make(chan struct{})}
	for _, c := range []struct{ body, want string }{
		{`{`, "malformed request"},
		{`{"command":"ADD","podNamespace":"a","podName":"b","extra":1}`, "unknown field"},
		{`{"command":"ADD","podName":"b"}`, "no pod namespace or name"},
		{`{"command":"EXPLODE","podNamespace":"a","podName":"b"}`, `unknown command "EXPLODE"`},
		{`{"command":"ADD","podNamespace":"a","podName":"` + strings.Repeat("x", maxRequest) + `"}`, "too large"},
	} {
		rec := httptest.NewRecorder()
		a.serveCNI(rec, httptest.NewRequest(http.MethodPost, plugin.AgentPath, strings.NewReader(c.body)))
		var rep plugin.Reply
		if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
			t.Fatalf("%.40s: unreadable reply %q", c.body, rec.Body)
		}
		if rec.Code != http.StatusBadRequest || !strings.Contains(rep.Error, c.want) {
			t.Errorf("%.40s: %d %q, want 400 with %q", c.body, rec.Code, rep.Error, c.want)
		}
	}
}
