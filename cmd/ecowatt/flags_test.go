package main

import (
	"io"
	"reflect"
	"testing"

	"github.com/ecowatt/ecowatt/cmd/internal/flagenv"
)

func TestParseOperators(t *testing.T) {
	cases := []struct {
		in   string
		want []operatorSpec
		err  bool
	}{
		{"", nil, false},
		{"alice:secret", []operatorSpec{{"alice", "secret", "admin"}}, false},
		{"alice:s:e:c", []operatorSpec{{"alice", "s:e:c", "admin"}}, false},
		{"bob:pw:viewer,carol:x:admin", []operatorSpec{{"bob", "pw", "viewer"}, {"carol", "x", "admin"}}, false},
		{"alice", nil, true},
		{"alice:", nil, true},
		{":pw", nil, true},
		{"alice:viewer", []operatorSpec{{"alice", "viewer", "admin"}}, false}, // a password that looks like a role
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseOperators(tc.in)
			if (err != nil) != tc.err || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parseOperators(%q) = %v, %v; want %v (error %v)", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

// TestOperatorFlagRepeats: a repeated --operator adds accounts (a plain
// string flag kept only the last); ECOWATT_OPERATOR is used only when no
// flag is given.
func TestOperatorFlagRepeats(t *testing.T) {
	cases := []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"--operator", "vic:p1:viewer", "--operator", "opa:p2:operator"}, "", "vic:p1:viewer,opa:p2:operator"},
		{[]string{"--operator", "a:x,b:y", "--operator", "c:z"}, "", "a:x,b:y,c:z"},
		{nil, "e:w:viewer,f:v", "e:w:viewer,f:v"},
		{[]string{"--operator", "a:x"}, "e:w", "a:x"},
	}
	for _, tc := range cases {
		var got listFlag
		fs := flagenv.New("test", "test")
		fs.Var(&got, "operator", "")
		getenv := func(k string) string {
			if k == "ECOWATT_OPERATOR" {
				return tc.env
			}
			return ""
		}
		if _, err := flagenv.Parse(fs, tc.args, getenv, io.Discard, io.Discard); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if string(got) != tc.want {
			t.Errorf("%v env %q: --operator = %q, want %q", tc.args, tc.env, got, tc.want)
		}
		if _, err := parseOperators(string(got)); err != nil {
			t.Errorf("%q: %v", got, err)
		}
	}
}
