package topics

import "testing"

func TestRoleAtLeast(t *testing.T) {
	for _, tc := range []struct {
		r, min Role
		want   bool
	}{
		{RoleViewer, RoleViewer, true},
		{RoleViewer, RoleOperator, false},
		{RoleOperator, RoleViewer, true},
		{RoleOperator, RoleAdmin, false},
		{RoleAdmin, RoleOperator, true},
		{"", RoleViewer, false},
		{"root", RoleViewer, false},
		{"Admin", RoleViewer, false},
	} {
		if got := tc.r.AtLeast(tc.min); got != tc.want {
			t.Errorf("%q.AtLeast(%q) = %v, want %v", tc.r, tc.min, got, tc.want)
		}
	}
}
