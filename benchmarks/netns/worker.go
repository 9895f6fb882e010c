package main

// The small programs the harness runs inside the pods, as
// `ip netns exec <pod> <this binary> worker <name> ...`, so that each one
// is a separate process living entirely in its pod's namespace.

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func runWorker(args []string) error {
	if len(args) == 0 {
		return errors.New("worker: name missing")
	}
	raiseNoFile()
	switch args[0] {
	case "echo-server":
		return workerEcho(args[1:])
	case "connrate":
		return workerConnRate(args[1:])
	case "hold":
		return workerHold(args[1:])
	}
	return fmt.Errorf("worker: unknown %q", args[0])
}

// workerEcho echoes every byte back until the peer closes, then closes
// with SO_LINGER 0: the RST leaves no TIME_WAIT on either side, also when
// the peer is a ztunnel that half-closed first.
func workerEcho(args []string) error {
	fs := flag.NewFlagSet("echo-server", flag.ContinueOnError)
	addr := fs.String("addr", ":9000", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if strings.Contains(err.Error(), "too many open files") {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go func() {
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
		}()
	}
}

// connRateResult is what workerConnRate prints (JSON, one line).
type connRateResult struct {
	Conns      int64   `json:"conns"`
	Errors     int64   `json:"errors"`
	Seconds    float64 `json:"seconds"`
	FirstError string  `json:"first_error,omitempty"`
	// Latency of the successful connections (connect, echo, close), ms.
	P50MS  float64 `json:"p50_ms"`
	P90MS  float64 `json:"p90_ms"`
	P99MS  float64 `json:"p99_ms"`
	P999MS float64 `json:"p999_ms"`
}

// workerConnRate opens a new TCP connection per request: connect, write
// one byte, read the echo, close with SO_LINGER 0 (RST, no TIME_WAIT), with
// -workers parallel loops for -d.
func workerConnRate(args []string) error {
	fs := flag.NewFlagSet("connrate", flag.ContinueOnError)
	addr := fs.String("addr", "", "server address")
	workers := fs.Int("workers", 32, "parallel loops")
	d := fs.Duration("d", 5*time.Second, "duration")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var conns, errs atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(*d)
	var wg sync.WaitGroup
	lat := make([][]float64, *workers) // per worker, ms
	for i := range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			dialer := net.Dialer{Timeout: 3 * time.Second}
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := oneConn(&dialer, *addr, b[:]); err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(time.Millisecond)
					continue
				}
				lat[i] = append(lat[i], float64(time.Since(t0).Microseconds())/1000)
				conns.Add(1)
			}
		}()
	}
	wg.Wait()
	r := connRateResult{Conns: conns.Load(), Errors: errs.Load(), Seconds: time.Since(start).Seconds()}
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		r.P50MS, r.P90MS, r.P99MS, r.P999MS = pct(all, 50), pct(all, 90), pct(all, 99), pct(all, 99.9)
	}
	if s, ok := firstErr.Load().(string); ok {
		r.FirstError = s
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func oneConn(d *net.Dialer, addr string, b []byte) error {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	defer func() {
		tc.SetLinger(0)
		tc.Close()
	}()
	tc.SetDeadline(time.Now().Add(3 * time.Second))
	b[0] = 'x'
	if _, err := tc.Write(b); err != nil {
		return err
	}
	if _, err := io.ReadFull(tc, b); err != nil {
		return err
	}
	return nil
}

// raiseNoFile sets the open-files soft limit to the hard limit (the
// harness does the same for itself, and children inherit it; a worker
// does it again so it never depends on how it was started).
func raiseNoFile() {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

// workerHold opens idle connections on command and keeps them open. It
// reads lines from stdin: "open N" opens N more (each checked end to end
// with a one-byte echo) and answers "ok TOTAL" or "err TOTAL msg"; "try N"
// attempts N more, expecting some to be refused, and answers "ok JSON"
// (a tryResult); "check" echoes one byte on every held connection and
// answers "ok JSON" (a checkResult); EOF or "close" closes them all and
// exits.
func workerHold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	addr := fs.String("addr", "", "server address")
	par := fs.Int("parallel", 16, "parallel dials")
	deadline := fs.Duration("try-deadline", 2*time.Second, "deadline of one attempt of \"try\" (connect, write, echo read)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch cmd {
		case "close":
			return nil
		case "open":
			n, err := strconv.Atoi(arg)
			if err != nil {
				return err
			}
			got, err := openIdle(*addr, n, *par)
			held = append(held, got...)
			if err != nil {
				fmt.Printf("err %d %v\n", len(held), err)
				continue
			}
			fmt.Printf("ok %d\n", len(held))
		case "try":
			n, err := strconv.Atoi(arg)
			if err != nil {
				return err
			}
			got, r := tryConns(*addr, n, *par, *deadline)
			held = append(held, got...)
			r.Held = len(held)
			j, _ := json.Marshal(r)
			fmt.Printf("ok %s\n", j)
		case "check":
			j, _ := json.Marshal(checkConns(held, *par))
			fmt.Printf("ok %s\n", j)
		default:
			return fmt.Errorf("hold: unknown command %q", cmd)
		}
	}
	return sc.Err()
}

func openIdle(addr string, n, par int) ([]net.Conn, error) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		first error
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			for next.Add(1) <= int64(n) {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(5 * time.Second))
					b[0] = 'h'
					if _, err = c.Write(b[:]); err == nil {
						_, err = io.ReadFull(c, b[:])
					}
					c.SetDeadline(time.Time{})
					if err != nil {
						c.Close()
					}
				}
				mu.Lock()
				if err != nil {
					if first == nil {
						first = err
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return conns, first
}

// tryResult is the answer to "try N": how each attempt ended. A clean
// refusal is a reset (ECONNRESET/EPIPE), an EOF or a refused connect; a
// timeout means the attempt hung until the deadline.
type tryResult struct {
	Attempts   int       `json:"attempts"`
	Accepted   int       `json:"accepted"`
	Reset      int       `json:"reset"`
	EOF        int       `json:"eof"`
	ConnRefuse int       `json:"conn_refused"`
	Timeout    int       `json:"timeout"`
	Other      int       `json:"other"`
	FirstOther string    `json:"first_other,omitempty"`
	RefuseMS   []float64 `json:"refuse_ms"` // per clean refusal, from the start of the connect to the error
	AcceptMS   []float64 `json:"accept_ms"` // per accepted attempt, connect to echo
	Held       int       `json:"held"`
	Seconds    float64   `json:"seconds"`
}

// tryConns attempts n connections, par at a time, each bounded by
// deadline (connect, write one byte, read the echo). Accepted connections
// are returned open; the others are closed and classified.
func tryConns(addr string, n, par int, deadline time.Duration) ([]net.Conn, tryResult) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		r     = tryResult{Attempts: n}
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	start := time.Now()
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			for next.Add(1) <= int64(n) {
				t0 := time.Now()
				dl := t0.Add(deadline)
				c, err := net.DialTimeout("tcp", addr, deadline)
				if err == nil {
					c.SetDeadline(dl)
					b[0] = 'l'
					if _, err = c.Write(b[:]); err == nil {
						_, err = io.ReadFull(c, b[:])
					}
					c.SetDeadline(time.Time{})
					if err != nil {
						c.(*net.TCPConn).SetLinger(0)
						c.Close()
					}
				}
				ms := float64(time.Since(t0).Microseconds()) / 1000
				mu.Lock()
				var ne net.Error
				switch {
				case err == nil:
					conns = append(conns, c)
					r.Accepted++
					r.AcceptMS = append(r.AcceptMS, ms)
				case errors.As(err, &ne) && ne.Timeout():
					r.Timeout++
				case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
					r.Reset++
					r.RefuseMS = append(r.RefuseMS, ms)
				case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
					r.EOF++
					r.RefuseMS = append(r.RefuseMS, ms)
				case errors.Is(err, syscall.ECONNREFUSED):
					r.ConnRefuse++
					r.RefuseMS = append(r.RefuseMS, ms)
				default:
					r.Other++
					if r.FirstOther == "" {
						r.FirstOther = err.Error()
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	return conns, r
}

// checkResult is the answer to "check".
type checkResult struct {
	OK         int    `json:"ok"`
	Failed     int    `json:"failed"`
	FirstError string `json:"first_error,omitempty"`
}

// checkConns echoes one byte on every held connection, par at a time.
func checkConns(conns []net.Conn, par int) checkResult {
	var (
		mu   sync.Mutex
		r    checkResult
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			for {
				i := next.Add(1) - 1
				if i >= int64(len(conns)) {
					return
				}
				c := conns[i]
				c.SetDeadline(time.Now().Add(5 * time.Second))
				b[0] = 'c'
				_, err := c.Write(b[:])
				if err == nil {
					_, err = io.ReadFull(c, b[:])
				}
				c.SetDeadline(time.Time{})
				mu.Lock()
				if err != nil {
					r.Failed++
					if r.FirstError == "" {
						r.FirstError = err.Error()
					}
				} else {
					r.OK++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return r
}
