package plugin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/strait-mesh/strait/cni/plugin"
	"github.com/strait-mesh/strait/internal/cnitest"
	"github.com/strait-mesh/strait/internal/netnstest"
)

// agent is a stand-in for the node agent's socket API (the real agent,
// cni/agent, is the next part of the CNI work): it records what the
// plugin sends and answers ok, or refuses with refuse set.
type agent struct {
	mu     sync.Mutex
	reqs   []plugin.Request
	refuse string
	srv    *http.Server
}

func startAgent(t *testing.T, sock string) *agent {
	t.Helper()
	a := &agent{}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+plugin.AgentPath, func(w http.ResponseWriter, r *http.Request) {
		var req plugin.Request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.mu.Lock()
		a.reqs = append(a.reqs, req)
		refuse := a.refuse
		a.mu.Unlock()
		json.NewEncoder(w).Encode(plugin.Reply{Error: refuse})
	})
	a.srv = &http.Server{Handler: mux}
	go a.srv.Serve(ln)
	t.Cleanup(func() { a.srv.Close() })
	return a
}

func (a *agent) last() plugin.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.reqs) == 0 {
		return plugin.Request{}
	}
	return a.reqs[len(a.reqs)-1]
}

// The real chain through libcni, as a kubelet runs it: the reference
// bridge and host-local plugins, then strait-cni, in a node namespace the
// test made (the bridge lives there) for a pod namespace the test made.
func TestChainThroughLibcni(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := t.TempDir()
	cnitest.Install(t, bin, "../..")
	node, pod := netnstest.New(t), netnstest.New(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "cni.sock")
	conf := func(extra string) *libcni.NetworkConfigList {
		t.Helper()
		raw := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "test", "plugins": [
			{"type": "bridge", "bridge": "cni0", "isGateway": true,
			 "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.250.0.0/24"}]]}},
			{"type": "strait-cni", "socket": %q %s}]}`, filepath.Join(dir, "ipam"), sock, extra)
		l, err := libcni.ConfListFromBytes([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin}, filepath.Join(dir, "cache"), nil)
	rt := func(id string) *libcni.RuntimeConf {
		return &libcni.RuntimeConf{ContainerID: id, NetNS: pod.Path(), IfName: "eth0", Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", "web-0"}, {"K8S_POD_UID", "uid-1"}, {"K8S_POD_INFRA_CONTAINER_ID", id}}}
	}
	// libcni runs the plugins as child processes of this thread: in the
	// node namespace.
	inNode := func(fn func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return node.Do(func() error { return fn(ctx) })
	}
	cniCode := func(err error) uint {
		var e *types.Error
		if errors.As(err, &e) {
			return e.Code
		}
		return 0
	}

	t.Run("agent down: ADD fails with a clear error, STATUS says not available", func(t *testing.T) {
		err := inNode(func(ctx context.Context) error { _, err := cni.AddNetworkList(ctx, conf(""), rt("c0")); return err })
		if err == nil || cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "node agent") || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("ADD without the agent = %v (code %d)", err, cniCode(err))
		}
		inNode(func(ctx context.Context) error { return cni.DelNetworkList(ctx, conf(""), rt("c0")) })
		err = inNode(func(ctx context.Context) error { return cni.GetStatusNetworkList(ctx, conf("")) })
		if cniCode(err) != 50 {
			t.Errorf("STATUS without the agent = %v, want code 50", err)
		}
	})
	t.Run("agent down, failOpen: the pod starts without the mesh", func(t *testing.T) {
		var res *current.Result
		err := inNode(func(ctx context.Context) error {
			r, err := cni.AddNetworkList(ctx, conf(`, "failOpen": true`), rt("c1"))
			if err == nil {
				res, err = current.NewResultFromResult(r)
			}
			return err
		})
		if err != nil || len(res.IPs) != 1 {
			t.Fatalf("ADD failOpen = %v, %+v", err, res)
		}
		if err := inNode(func(ctx context.Context) error { return cni.DelNetworkList(ctx, conf(`, "failOpen": true`), rt("c1")) }); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	})

	a := startAgent(t, sock)
	t.Run("ADD tells the agent the pod, its netns and IPs and passes the result through", func(t *testing.T) {
		var res *current.Result
		err := inNode(func(ctx context.Context) error {
			r, err := cni.AddNetworkList(ctx, conf(""), rt("c2"))
			if err == nil {
				res, err = current.NewResultFromResult(r)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.IPs) != 1 || !strings.HasPrefix(res.IPs[0].Address.IP.String(), "10.250.0.") {
			t.Fatalf("result = %+v, want the bridge's host-local address passed through", res)
		}
		got := a.last()
		want := plugin.Request{Command: "ADD", ContainerID: "c2", Netns: pod.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "web-0", PodUID: "uid-1",
			IPs: []string{res.IPs[0].Address.IP.String()}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("agent got %+v, want %+v", got, want)
		}
		if err := inNode(func(ctx context.Context) error { return cni.CheckNetworkList(ctx, conf(""), rt("c2")) }); err != nil {
			t.Errorf("CHECK: %v", err)
		}
		if a.last().Command != "CHECK" {
			t.Errorf("CHECK not passed to the agent: %+v", a.last())
		}
		if err := inNode(func(ctx context.Context) error { return cni.GetStatusNetworkList(ctx, conf("")) }); err != nil {
			t.Errorf("STATUS with the agent up: %v", err)
		}
		if err := inNode(func(ctx context.Context) error { return cni.DelNetworkList(ctx, conf(""), rt("c2")) }); err != nil {
			t.Fatal(err)
		}
		if r := a.last(); r.Command != "DEL" || r.PodName != "web-0" {
			t.Errorf("DEL not passed to the agent: %+v", r)
		}
	})
	t.Run("the agent refuses: ADD fails with its reason", func(t *testing.T) {
		a.mu.Lock()
		a.refuse = "ztunnel did not acknowledge the pod"
		a.mu.Unlock()
		err := inNode(func(ctx context.Context) error { _, err := cni.AddNetworkList(ctx, conf(""), rt("c3")); return err })
		if err == nil || !strings.Contains(err.Error(), "ztunnel did not acknowledge the pod") {
			t.Fatalf("ADD refused by the agent = %v", err)
		}
		inNode(func(ctx context.Context) error { return cni.DelNetworkList(ctx, conf(""), rt("c3")) })
	})
}
