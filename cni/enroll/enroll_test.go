package enroll

import "testing"

func TestEnrolled(t *testing.T) {
	ambient := map[string]string{LabelDataplaneMode: ModeAmbient}
	none := map[string]string{LabelDataplaneMode: ModeNone}
	for _, c := range []struct {
		pod, ns map[string]string
		want    bool
	}{
		{nil, nil, false},
		{nil, ambient, true},
		{none, ambient, false},
		{ambient, nil, true},
		{ambient, none, true},
		{nil, none, false},
		{map[string]string{LabelDataplaneMode: "sidecar"}, nil, false},
		{map[string]string{LabelDataplaneMode: "bogus"}, ambient, true},
		{map[string]string{"other": "x"}, map[string]string{LabelDataplaneMode: "Ambient"}, false},
	} {
		if got := Enrolled(c.pod, c.ns); got != c.want {
			t.Errorf("Enrolled(%v, %v) = %v, want %v", c.pod, c.ns, got, c.want)
		}
	}
}
