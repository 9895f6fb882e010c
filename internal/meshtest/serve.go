package meshtest

import (
	"context"
	"io"
	"net"
	"strconv"

	"github.com/strait-mesh/strait/ztunnel/inpod"
)

// Serve runs a server inside a pod's namespace (the pod's "app"),
// calling handle on its own goroutine for each connection, which it
// closes afterwards. Close the returned listener to stop it.
func Serve(p *Pod, port int, handle func(net.Conn)) (io.Closer, error) {
	ns, err := p.OpenNetNS()
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	ln, err := ns.Listen(context.Background(), ":"+strconv.Itoa(port), inpod.SocketOpts{})
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln, nil
}

// Echo is a handler that echoes and half-closes after EOF.
func Echo(c net.Conn) {
	io.Copy(c, c)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
