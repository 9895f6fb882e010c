package haproxyhbone

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	f, err := Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	for path, actions := range map[string][]string{
		f.Client: {`"hbone_connect"`, `"hbone_strip_200"`},
		f.Server: {`"hbone_accept"`},
	} {
		if !filepath.IsAbs(path) || filepath.Dir(path) != dir {
			t.Fatalf("path %q not absolute in %s", path, dir)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range actions {
			if !strings.Contains(string(b), "core.register_action("+a) {
				t.Errorf("%s does not register %s", path, a)
			}
		}
	}
	if _, err := Write(filepath.Join(dir, "missing", "dir")); err == nil {
		t.Fatal("writing into a missing directory succeeded")
	}
}
