// Package zds is the protocol by which the node agent (the CNI side) hands
// each enrolled pod's network namespace to the node proxy (ztunnel), so
// that ztunnel can open its listeners inside the pod. It is modelled on,
// and byte-compatible with, Istio ztunnel's ZDS (proto/zds.proto,
// src/inpod/): same field numbers, same flow.
//
// # Transport
//
// A unix domain socket of type SOCK_SEQPACKET, by default
// DefaultSocketPath (/var/run/strait/ztunnel.sock). SEQPACKET keeps message
// boundaries, so each packet is exactly one protobuf message (at most
// MaxMessageSize, 64 KiB) and a truncated packet (MSG_TRUNC) is detected,
// not misparsed. The node agent is the server: Listen binds the socket
// (mode 0600, replacing a stale socket file, refusing any other kind of
// file). ztunnel is the client: it dials, and redials with jittered
// exponential backoff (capped at 5 s) whenever the agent restarts
// (Client.Serve).
//
// # Flow
//
//  1. ztunnel connects and sends ZdsHello{version: V1}. The agent's Accept
//     reads it (bounded by ServerConfig.HelloTimeout) and closes the
//     connection on any other version (ErrVersionMismatch) or a bad hello.
//  2. The agent replays its whole state, a snapshot: AddWorkload for each
//     pod whose netns it holds (or KeepWorkload, with the netns if it has
//     it, for a pod ztunnel may already run), then SnapshotSent. ztunnel
//     then drops every workload it runs that the snapshot did not mention;
//     Handlers that implement SnapshotStarter learn where a snapshot starts.
//  3. From then on the agent sends AddWorkload and DelWorkload as pods
//     come and go.
//
// Every WorkloadRequest is answered by exactly one WorkloadResponse{Ack},
// in order, before the next request is sent: an empty Ack.error acks, a
// non-empty one nacks and says why. There is no request id; the order is
// the correlation. So the agent side (AgentConn) keeps one request in
// flight, and closes the connection if an ack does not come in time
// (ServerConfig.AckTimeout), if the caller's ctx ends while it waits, or on
// any I/O or protocol error: a late ack could no longer be matched to its
// request. ztunnel then reconnects and gets a fresh snapshot, which is
// always safe. A nack (*NackError) leaves the connection as it is.
//
// # File descriptors and who owns them
//
// The pod's netns travels as one SCM_RIGHTS fd in the ancillary data of the
// AddWorkload packet (required) or KeepWorkload packet (optional); no other
// packet may carry one.
//
//   - Sending (AgentConn.Add, AgentConn.Keep): the *os.File stays the
//     caller's. The kernel gives ztunnel its own duplicate; the caller may
//     close its file as soon as the call returns.
//   - Receiving (ProxyConn.Next): fds are received close-on-exec. Before a
//     request is handed over, its fd is checked to be a network namespace
//     (fstatfs magic NSFS_MAGIC, and ioctl NS_GET_NSTYPE = CLONE_NEWNET
//     where the kernel has it). A Request's Netns then belongs to the
//     receiver, who must close it; with Client.Serve, the Handler owns it
//     whatever it returns.
//   - Refused packets: every fd that arrived with them is closed by the
//     package before Next returns, including every fd of a packet with
//     more than one, and those of a packet whose ancillary data was
//     truncated (MSG_CTRUNC).
//
// # Refusals on ztunnel's side
//
// ProxyConn.Next nacks, with a clear reason, and never hands to its caller:
// bytes that are not a WorkloadRequest, an unknown or missing payload, an
// empty uid, an add without an fd ("add without netns fd"), an fd that is
// not a network namespace ("not a network namespace"), more than one fd, an
// fd on a del or snapshot, an oversized packet, truncated ancillary data.
// It returns a *RequestError for each; the connection stays in step. What a
// valid request means is the caller's to judge: in particular a DelWorkload
// for a uid ztunnel does not know is passed through to Handler.DelWorkload,
// which decides (acking is the expected answer: deletes are idempotent, and
// the agent may repeat one across a reconnection).
//
// # Errors
//
// Every error starts with "zds:" and wraps a sentinel of this package
// (ErrPeerClosed, ErrConnBroken, ErrVersionMismatch, ...), a context error
// or a net/os error, for errors.Is. Every blocking call takes a context.
//
// The message definitions are in zds.proto; the generated Go code, in
// package zdspb, is checked in and regenerated with `go generate
// ./cni/zds` (see gen.sh: protoc plus protoc-gen-go v1.36.12).
package zds

//go:generate sh gen.sh
