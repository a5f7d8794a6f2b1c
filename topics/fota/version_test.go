package fota

import (
	"fmt"
	"testing"
)

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"1.0.4", "1.0.10", -1},
		{"1.0.10", "1.0.4", 1},
		{"1.0.4", "1.0.4", 0},
		{"1.2", "1.2.0", 0},
		{"1", "1.0.0", 0},
		{"v1.2.3", "1.2.3", 0},
		{"2.0.0", "10.0.0", -1},
		{"1.10.0", "1.9.9", 1},
		{"1.1.0-rc.1", "1.1.0", -1},
		{"1.1.0", "1.1.0-rc.1", 1},
		{"1.1.0-alpha", "1.1.0-alpha.1", -1},
		{"1.1.0-alpha.1", "1.1.0-alpha.beta", -1},
		{"1.1.0-alpha.2", "1.1.0-alpha.10", -1},
		{"1.1.0-alpha.10", "1.1.0-beta", -1},
		{"1.1.0-rc-1", "1.1.0-rc-2", -1},
		{"1.0.0+build.7", "1.0.0+build.8", 0},
		{"1.0.0-rc.1+b", "1.0.0-rc.1", 0},
		{"18446744073709551615.0.0", "18446744073709551614.9.9", 1},
	} {
		t.Run(fmt.Sprintf("%s vs %s", tc.a, tc.b), func(t *testing.T) {
			got, err := CompareVersions(tc.a, tc.b)
			if err != nil || got != tc.want {
				t.Fatalf("= %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestCompareVersionsErrors(t *testing.T) {
	for _, bad := range []string{"", "v", "1.", ".1", "1..2", "1.2.3.4", "01.2.3", "1.02", "a.b.c", "1.0.0-",
		"1.0.0-rc..1", "1.0.0-01", "1.0.0+", "1.0.0-r_c", "1.0.0 ", "-1.0.0", "18446744073709551616", "V1.0.0"} {
		t.Run(bad, func(t *testing.T) {
			_, err := CompareVersions(bad, "1.0.0")
			wantErr(t, err, ErrMalformed, "")
			_, err = CompareVersions("1.0.0", bad)
			wantErr(t, err, ErrMalformed, "")
		})
	}
}

func TestCheckUpgrade(t *testing.T) {
	for _, tc := range []struct {
		running, offered string
		sentinel         error
	}{
		{"1.0.3", "1.0.4", nil},
		{"1.0.9", "1.0.10", nil},
		{"1.1.0-rc.1", "1.1.0", nil},
		{"1.0.4", "1.0.4", ErrDowngrade},
		{"1.0.10", "1.0.9", ErrDowngrade},
		{"1.1.0", "1.1.0-rc.2", ErrDowngrade},
		{"1.0.4", "garbage", ErrMalformed},
	} {
		t.Run(tc.running+" to "+tc.offered, func(t *testing.T) {
			wantErr(t, CheckUpgrade(tc.running, tc.offered), tc.sentinel, "")
		})
	}
}
