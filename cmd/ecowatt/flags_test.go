package main

import (
	"reflect"
	"testing"
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
