// Package plugin is Strait's chained CNI plugin: after the primary CNI
// has set up a pod's network, it asks the node agent over a unix socket
// to enroll the pod (the agent decides whether the pod is in the mesh,
// installs the redirection and hands the pod to ztunnel) and passes the
// previous result through unchanged. It stays tiny: no client-go, no proxy
// code.
//
// If the agent cannot be reached, ADD fails (the kubelet retries, and no
// pod of an enrolled namespace starts unprotected) unless the network
// configuration says "failOpen": true. DEL always succeeds once the agent
// was told or could not be reached: a pod must never be stuck deleting.
package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// errPluginNotAvailable is the CNI 1.1 STATUS code "plugin not
// available" (the cni module does not name it yet).
const errPluginNotAvailable uint = 50

// DefaultSocket is where the node agent listens.
const DefaultSocket = "/var/run/strait/cni.sock"

// AgentPath is the agent's HTTP endpoint on the socket.
const AgentPath = "/v1/cni"

// NetConf is the plugin's configuration in the chain.
type NetConf struct {
	types.PluginConf
	// Socket is the node agent's unix socket (DefaultSocket).
	Socket string `json:"socket,omitempty"`
	// FailOpen lets pods start when the agent is unreachable (unprotected).
	FailOpen bool `json:"failOpen,omitempty"`
	// TimeoutSeconds bounds one request to the agent (default 30: the
	// agent waits for ztunnel's ack before it answers).
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// Request is what the plugin tells the agent.
type Request struct {
	Command      string   `json:"command"` // ADD, DEL or CHECK
	ContainerID  string   `json:"containerID"`
	Netns        string   `json:"netns"`
	IfName       string   `json:"ifName"`
	PodNamespace string   `json:"podNamespace"`
	PodName      string   `json:"podName"`
	PodUID       string   `json:"podUID,omitempty"`
	IPs          []string `json:"ips,omitempty"`
}

// Reply is the agent's answer; a non-empty Error refuses the command.
type Reply struct {
	Error string `json:"error,omitempty"`
}

// k8sArgs are the kubelet's CNI_ARGS.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
}

// Funcs are the plugin's commands, for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus}
}

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.All

func parse(args *skel.CmdArgs) (*NetConf, *Request, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(args.StdinData, conf); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, "strait-cni: cannot parse the network configuration", err.Error())
	}
	if conf.Socket == "" {
		conf.Socket = DefaultSocket
	}
	if conf.TimeoutSeconds <= 0 {
		conf.TimeoutSeconds = 30
	}
	var ka k8sArgs
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return nil, nil, types.NewError(types.ErrInvalidEnvironmentVariables, "strait-cni: cannot parse CNI_ARGS", err.Error())
	}
	return conf, &Request{
		ContainerID: args.ContainerID, Netns: args.Netns, IfName: args.IfName,
		PodNamespace: string(ka.K8S_POD_NAMESPACE), PodName: string(ka.K8S_POD_NAME), PodUID: string(ka.K8S_POD_UID),
	}, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, req, err := parse(args)
	if err != nil {
		return err
	}
	if conf.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "strait-cni must be chained after the primary CNI plugin", "no prevResult in the configuration")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "strait-cni: cannot parse prevResult", err.Error())
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "strait-cni: cannot convert prevResult", err.Error())
	}
	if req.PodNamespace == "" || req.PodName == "" {
		// Not a Kubernetes pod (no K8S_POD_* args): nothing to enroll.
		return types.PrintResult(conf.PrevResult, conf.CNIVersion)
	}
	req.Command = "ADD"
	for _, ip := range prev.IPs {
		req.IPs = append(req.IPs, ip.Address.IP.String())
	}
	if err := call(conf, req); err != nil {
		var unreachable *unreachableError
		if errors.As(err, &unreachable) && conf.FailOpen {
			fmt.Fprintf(stderr, "%v; failOpen is set: pod %s/%s starts without the mesh\n", err, req.PodNamespace, req.PodName)
			return types.PrintResult(conf.PrevResult, conf.CNIVersion)
		}
		return err
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, req, err := parse(args)
	if err != nil {
		return err
	}
	if req.PodNamespace == "" || req.PodName == "" {
		return nil
	}
	req.Command = "DEL"
	if err := call(conf, req); err != nil {
		var unreachable *unreachableError
		if errors.As(err, &unreachable) {
			// The agent reconciles from the netns rules when it is back.
			fmt.Fprintf(stderr, "%v; the agent cleans up when it is back\n", err)
			return nil
		}
		return err
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, req, err := parse(args)
	if err != nil {
		return err
	}
	if req.PodNamespace == "" || req.PodName == "" {
		return nil
	}
	req.Command = "CHECK"
	err = call(conf, req)
	var unreachable *unreachableError
	if errors.As(err, &unreachable) && conf.FailOpen {
		return nil
	}
	return err
}

// cmdStatus reports whether the plugin can serve ADDs: the agent answers.
func cmdStatus(args *skel.CmdArgs) error {
	conf := &NetConf{}
	if err := json.Unmarshal(args.StdinData, conf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "strait-cni: cannot parse the network configuration", err.Error())
	}
	if conf.Socket == "" {
		conf.Socket = DefaultSocket
	}
	if conf.FailOpen {
		return nil
	}
	c, err := net.DialTimeout("unix", conf.Socket, 2*time.Second)
	if err != nil {
		return types.NewError(errPluginNotAvailable, "strait-cni: the Strait node agent is not running", err.Error())
	}
	c.Close()
	return nil
}

type unreachableError struct{ err error }

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// stderr is where fail-open notices go (the kubelet logs it).
var stderr io.Writer = io.Discard

// SetStderr sets where notices go (cmd/strait-cni: os.Stderr).
func SetStderr(w io.Writer) { stderr = w }

// call sends req to the agent and turns every failure into a CNI error
// with a clear message; an unreachable agent is an *unreachableError
// inside it.
func call(conf *NetConf, req *Request) error {
	body, err := json.Marshal(req)
	if err != nil {
		return types.NewError(types.ErrInternal, "strait-cni: cannot encode the request", err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(conf.TimeoutSeconds)*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", conf.Socket)
	}}}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://strait-agent"+AgentPath, bytes.NewReader(body))
	if err != nil {
		return types.NewError(types.ErrInternal, "strait-cni: cannot build the request", err.Error())
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		msg := fmt.Sprintf("strait-cni: the Strait node agent at %s is unreachable (%s of pod %s/%s)", conf.Socket, req.Command, req.PodNamespace, req.PodName)
		if req.Command == "ADD" {
			msg = fmt.Sprintf("strait-cni: the Strait node agent at %s is unreachable; pod %s/%s cannot be enrolled (the kubelet retries; set \"failOpen\": true to start pods without the mesh)", conf.Socket, req.PodNamespace, req.PodName)
		}
		return &cniError{types.NewError(types.ErrTryAgainLater, msg, err.Error()), &unreachableError{err}}
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var rep Reply
	if err := json.Unmarshal(raw, &rep); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("strait-cni: the node agent answered %s with an unreadable body", resp.Status), err.Error())
	}
	if resp.StatusCode != http.StatusOK || rep.Error != "" {
		return types.NewError(types.ErrInternal, fmt.Sprintf("strait-cni: the node agent refused %s of pod %s/%s: %s", req.Command, req.PodNamespace, req.PodName, rep.Error), resp.Status)
	}
	return nil
}

// cniError is a CNI error that also unwraps to its cause; skel prints
// the *types.Error it holds.
type cniError struct {
	cni   *types.Error
	cause error
}

func (e *cniError) Error() string { return e.cni.Error() }

// As lets skel find the *types.Error (its code, message and details).
func (e *cniError) As(target any) bool {
	if t, ok := target.(**types.Error); ok {
		*t = e.cni
		return true
	}
	return false
}

func (e *cniError) Unwrap() error { return e.cause }
