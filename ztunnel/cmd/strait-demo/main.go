// Command strait-demo is `make demo`: a whole Strait mesh on one machine.
//
// As root it builds two "nodes" and four "pods" as network namespaces,
// runs one ztunnel process per node, plays the node agent (redirection
// rules in each pod, netns handed over ZDS), and shows a request tunneled
// across nodes, a policy refusal, plaintext refused in STRICT mode and
// the key metrics. It removes everything it made, also on Ctrl-C.
//
// Without root it runs the same story on loopback with the HBONE library
// and says what it skipped.
//
// The subcommands `echo-server ADDR` and `client ADDR MSG` are the small
// processes the demo runs inside the pods.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "echo-server":
			exitOn(podEchoServer(os.Args[2:]))
			return
		case "client":
			exitOn(podClient(os.Args[2:]))
			return
		}
	}
	ztunnel := flag.String("ztunnel", "", "ztunnel binary (default: next to this one)")
	loopback := flag.Bool("loopback", false, "run the loopback demo even as root")
	tunnels := flag.Int("tunnels", 2000, "loopback demo: tunnels for the pooling check")
	flag.Parse()

	if os.Geteuid() != 0 || *loopback {
		if os.Geteuid() != 0 {
			fmt.Println("not root: running the loopback demo (skipped: network namespaces, redirection rules, ztunnel processes, node agent)")
		}
		exitOn(runLoopback("", *tunnels))
		return
	}
	if *ztunnel == "" {
		self, err := os.Executable()
		exitOn(err)
		*ztunnel = filepath.Join(filepath.Dir(self), "ztunnel")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	exitOn(runMesh(ctx, *ztunnel))
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "strait-demo:", err)
		os.Exit(1)
	}
}
