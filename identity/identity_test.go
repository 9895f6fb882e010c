package identity

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestNew(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	long253 := strings.Repeat(strings.Repeat("b", 62)+".", 4) + "b" // 4*63+1 = 253
	tests := []struct {
		name           string
		td, ns, sa     string
		want           string
		wantErr        error
		wantErrContain string
	}{
		{name: "ok", td: "cluster.local", ns: "default", sa: "default", want: "spiffe://cluster.local/ns/default/sa/default"},
		{name: "ok dashes and digits", td: "example.org", ns: "ns-1", sa: "sa-2", want: "spiffe://example.org/ns/ns-1/sa/sa-2"},
		{name: "ok dotted service account", td: "td", ns: "a", sa: "my.sa.v1", want: "spiffe://td/ns/a/sa/my.sa.v1"},
		{name: "ok 63-char namespace", td: "td", ns: long63, sa: "x", want: "spiffe://td/ns/" + long63 + "/sa/x"},
		{name: "ok 253-char service account", td: "td", ns: "x", sa: long253, want: "spiffe://td/ns/x/sa/" + long253},
		{name: "ok single char", td: "t", ns: "a", sa: "b", want: "spiffe://t/ns/a/sa/b"},

		{name: "empty trust domain", td: "", ns: "a", sa: "b", wantErr: ErrInvalidTrustDomain, wantErrContain: "trust domain is empty"},
		{name: "uppercase trust domain", td: "Cluster.local", ns: "a", sa: "b", wantErr: ErrInvalidTrustDomain, wantErrContain: `trust domain "Cluster.local"`},
		{name: "trust domain as URI", td: "spiffe://cluster.local", ns: "a", sa: "b", wantErr: ErrInvalidTrustDomain, wantErrContain: "bare name"},
		{name: "trust domain with port", td: "td:443", ns: "a", sa: "b", wantErr: ErrInvalidTrustDomain},
		{name: "empty namespace", td: "td", ns: "", sa: "b", wantErr: ErrInvalidNamespace, wantErrContain: `namespace "" is empty`},
		{name: "64-char namespace", td: "td", ns: long63 + "a", sa: "b", wantErr: ErrInvalidNamespace, wantErrContain: "64 characters"},
		{name: "uppercase namespace", td: "td", ns: "Default", sa: "b", wantErr: ErrInvalidNamespace, wantErrContain: `invalid character 'D' at offset 0`},
		{name: "namespace with dot", td: "td", ns: "a.b", sa: "b", wantErr: ErrInvalidNamespace, wantErrContain: `'.'`},
		{name: "namespace leading dash", td: "td", ns: "-a", sa: "b", wantErr: ErrInvalidNamespace, wantErrContain: "starts or ends with '-'"},
		{name: "namespace trailing dash", td: "td", ns: "a-", sa: "b", wantErr: ErrInvalidNamespace},
		{name: "namespace underscore", td: "td", ns: "a_b", sa: "b", wantErr: ErrInvalidNamespace},
		{name: "namespace with slash", td: "td", ns: "a/sa/b", sa: "b", wantErr: ErrInvalidNamespace},
		{name: "empty service account", td: "td", ns: "a", sa: "", wantErr: ErrInvalidServiceAccount, wantErrContain: `service account "" is empty`},
		{name: "254-char service account", td: "td", ns: "a", sa: long253 + "b", wantErr: ErrInvalidServiceAccount, wantErrContain: "254 characters"},
		{name: "service account empty label", td: "td", ns: "a", sa: "a..b", wantErr: ErrInvalidServiceAccount, wantErrContain: "empty label"},
		{name: "service account leading dot", td: "td", ns: "a", sa: ".a", wantErr: ErrInvalidServiceAccount},
		{name: "service account trailing dot", td: "td", ns: "a", sa: "a.", wantErr: ErrInvalidServiceAccount},
		{name: "service account label ends with dash", td: "td", ns: "a", sa: "a-.b", wantErr: ErrInvalidServiceAccount},
		{name: "service account uppercase", td: "td", ns: "a", sa: "my.SA", wantErr: ErrInvalidServiceAccount, wantErrContain: "offset 3"},
		{name: "service account dot-dot", td: "td", ns: "a", sa: "..", wantErr: ErrInvalidServiceAccount},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := New(tt.td, tt.ns, tt.sa)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("New(%q, %q, %q) error = %v, want errors.Is %v", tt.td, tt.ns, tt.sa, err, tt.wantErr)
				}
				if !strings.HasPrefix(err.Error(), "identity: ") {
					t.Errorf("error %q lacks the package prefix", err)
				}
				if !strings.Contains(err.Error(), tt.wantErrContain) {
					t.Errorf("error %q does not contain %q", err, tt.wantErrContain)
				}
				if !id.IsZero() {
					t.Errorf("got non-zero ID %+v with an error", id)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%q, %q, %q): %v", tt.td, tt.ns, tt.sa, err)
			}
			if got := id.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if err := id.Validate(); err != nil {
				t.Errorf("Validate() = %v", err)
			}
			if id.IsZero() {
				t.Error("IsZero() = true")
			}
			back, err := Parse(id.String())
			if err != nil || back != id {
				t.Errorf("Parse(String()) = %+v, %v; want %+v", back, err, id)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    ID
		wantErr error
		wantMsg string // exact error message, if set
	}{
		{in: "spiffe://cluster.local/ns/default/sa/default", want: mustNew(t, "cluster.local", "default", "default")},
		{in: "spiffe://td/ns/a/sa/b.c", want: mustNew(t, "td", "a", "b.c")},
		{in: "spiffe://td/ns/sa/sa/ns", want: mustNew(t, "td", "sa", "ns")},

		{in: "", wantErr: ErrInvalidSPIFFEID},
		{in: "cluster.local/ns/a/sa/b", wantErr: ErrInvalidSPIFFEID},
		{in: "https://td/ns/a/sa/b", wantErr: ErrInvalidSPIFFEID},
		{in: "SPIFFE://td/ns/a/sa/b", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe:///ns/a/sa/b", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://TD/ns/a/sa/b", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://td:8080/ns/a/sa/b", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://user@td/ns/a/sa/b", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://td/ns/a/sa/b/", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://td/ns/a/sa/b?x=y", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://td/ns/a/sa/b#frag", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://td/ns/a/sa/%62", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://td/ns/a//sa/b", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://td/ns/./sa/b", wantErr: ErrInvalidSPIFFEID},
		{in: "spiffe://td/ns/../sa/b", wantErr: ErrInvalidSPIFFEID},

		{in: "spiffe://td", wantErr: ErrInvalidPath, wantMsg: `identity: parse "spiffe://td": path must be /ns/<namespace>/sa/<serviceaccount>`},
		{in: "spiffe://td/ns/a", wantErr: ErrInvalidPath, wantMsg: `identity: parse "spiffe://td/ns/a": path must be /ns/<namespace>/sa/<serviceaccount>`},
		{in: "spiffe://td/ns/a/sa", wantErr: ErrInvalidPath},
		{in: "spiffe://td/ns/a/sa/b/c", wantErr: ErrInvalidPath},
		{in: "spiffe://td/sa/b/ns/a", wantErr: ErrInvalidPath},
		{in: "spiffe://td/NS/a/sa/b", wantErr: ErrInvalidPath},
		{in: "spiffe://td/ns/a/serviceaccount/b", wantErr: ErrInvalidPath},
		{in: "spiffe://td/x/ns/a/sa/b", wantErr: ErrInvalidPath},
		{in: "spiffe://td/ns/A/sa/b", wantErr: ErrInvalidNamespace},
		{in: "spiffe://td/ns/a_b/sa/b", wantErr: ErrInvalidNamespace},
		{in: "spiffe://td/ns/a.b/sa/b", wantErr: ErrInvalidNamespace},
		{in: "spiffe://td/ns/a/sa/B", wantErr: ErrInvalidServiceAccount},
		{in: "spiffe://td/ns/a/sa/b_c", wantErr: ErrInvalidServiceAccount},
		{in: "spiffe://td/ns/a/sa/-b", wantErr: ErrInvalidServiceAccount},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want errors.Is %v", tt.in, err, tt.wantErr)
				}
				if tt.wantMsg != "" && err.Error() != tt.wantMsg {
					t.Errorf("Parse(%q) error\n got %q\nwant %q", tt.in, err, tt.wantMsg)
				}
				if !strings.HasPrefix(err.Error(), "identity: parse ") {
					t.Errorf("error %q lacks the identity: parse prefix", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestFromSPIFFEID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("td")
	tests := []struct {
		name    string
		in      spiffeid.ID
		want    ID
		wantErr error
	}{
		{name: "ok", in: spiffeid.RequireFromString("spiffe://td/ns/a/sa/b"), want: ID{TrustDomain: td, Namespace: "a", ServiceAccount: "b"}},
		{name: "zero", in: spiffeid.ID{}, wantErr: ErrInvalidSPIFFEID},
		{name: "trust domain only", in: td.ID(), wantErr: ErrInvalidPath},
		{name: "workload path", in: spiffeid.RequireFromString("spiffe://td/workload/x"), wantErr: ErrInvalidPath},
		{name: "bad namespace", in: spiffeid.RequireFromString("spiffe://td/ns/-/sa/b"), wantErr: ErrInvalidNamespace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromSPIFFEID(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("FromSPIFFEID(%q) error = %v, want %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("FromSPIFFEID(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if err == nil && got.SPIFFEID() != tt.in {
				t.Errorf("SPIFFEID() = %q, want %q", got.SPIFFEID(), tt.in)
			}
		})
	}
}

func TestZeroAndInvalidLiteral(t *testing.T) {
	var zero ID
	if !zero.IsZero() {
		t.Error("zero ID: IsZero() = false")
	}
	if zero.String() != "" || !zero.SPIFFEID().IsZero() {
		t.Errorf("zero ID renders as %q", zero.String())
	}
	if err := zero.Validate(); !errors.Is(err, ErrInvalidTrustDomain) {
		t.Errorf("zero.Validate() = %v, want ErrInvalidTrustDomain", err)
	}
	bad := ID{TrustDomain: spiffeid.RequireTrustDomainFromString("td"), Namespace: "a/sa/b", ServiceAccount: "c"}
	if bad.IsZero() {
		t.Error("literal ID: IsZero() = true")
	}
	if s := bad.String(); s != "" {
		t.Errorf("invalid literal renders as %q, want \"\"", s)
	}
	if err := bad.Validate(); !errors.Is(err, ErrInvalidNamespace) {
		t.Errorf("Validate() = %v, want ErrInvalidNamespace", err)
	}
	noTD := ID{Namespace: "a", ServiceAccount: "b"}
	if err := noTD.Validate(); !errors.Is(err, ErrInvalidTrustDomain) {
		t.Errorf("Validate() = %v, want ErrInvalidTrustDomain", err)
	}
	if !noTD.SPIFFEID().IsZero() {
		t.Errorf("ID without trust domain renders as %q", noTD.SPIFFEID())
	}
}

func mustNew(t *testing.T, td, ns, sa string) ID {
	t.Helper()
	id, err := New(td, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
