package netaddr

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
)

func TestAddrPort(t *testing.T) {
	for _, tc := range []struct {
		in   net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 80}, "10.1.2.3:80"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3"), Port: 80}, "10.1.2.3:80"},
		{&net.UDPAddr{IP: net.ParseIP("fd00::1"), Port: 53}, "[fd00::1]:53"},
		{nil, "invalid AddrPort"},
	} {
		if got := AddrPort(tc.in).String(); got != tc.want {
			t.Errorf("AddrPort(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
	if AddrPort(&net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3")}).Addr() != netip.MustParseAddr("10.1.2.3") {
		t.Fatal("not unmapped")
	}
}

func TestResetCloseSendsRST(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Read(make([]byte, 1)) // connected for sure on both ends
			ResetClose(c)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{1})
	_, err = io.ReadAll(c)
	if !errorsIs(err, syscall.ECONNRESET) {
		t.Fatalf("read after ResetClose: %v, want connection reset", err)
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }
