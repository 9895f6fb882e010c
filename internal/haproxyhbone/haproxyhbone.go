// Package haproxyhbone holds the Lua glue that lets stock haproxy 2.6 sit
// at either end of an HBONE tunnel. haproxy relays HTTP/2 CONNECT over
// mTLS itself; the glue only originates the CONNECT for a plain TCP
// client (and strips the 200), or terminates one (answers 200, routes to
// the authority). The interop tests and the benchmark harness share it.
package haproxyhbone

import (
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
)

var (
	//go:embed hbone_client.lua
	clientLua []byte
	//go:embed hbone_server.lua
	serverLua []byte
)

// Files are the written Lua scripts, for haproxy's lua-load.
type Files struct {
	Client string // actions hbone_connect and hbone_strip_200
	Server string // action hbone_accept
}

// Write puts both scripts into dir and returns their absolute paths.
func Write(dir string) (Files, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Files{}, fmt.Errorf("haproxyhbone: %w", err)
	}
	f := Files{Client: filepath.Join(abs, "hbone_client.lua"), Server: filepath.Join(abs, "hbone_server.lua")}
	for path, data := range map[string][]byte{f.Client: clientLua, f.Server: serverLua} {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return Files{}, fmt.Errorf("haproxyhbone: %w", err)
		}
	}
	return f, nil
}
