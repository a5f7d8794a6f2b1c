package main

import (
	"encoding/json"
	"testing"
)

// TestEncryptDownlinks: with --encrypt-downlinks a simulated device still
// runs its command end to end (it opens the AES-GCM downlink and answers);
// TestDownlinkEncryption in backend checks the bytes are encrypted.
func TestEncryptDownlinks(t *testing.T) {
	s := startServer(t, append([]string{"--encrypt-downlinks"}, commandArgs...)...)
	keys := s.provision(t, "enc", 1)
	feats := newFeatureSet()
	startFleet(t, s, keys, "", feats.setup)
	cmdWaitOnline(t, s, 1)
	out, err := s.cli(t, "command", "send", "enc-0001", "ping", "--wait", "-o", "json")
	var c commandDoc
	if err != nil || json.Unmarshal([]byte(out), &c) != nil || c.State != "succeeded" {
		t.Fatalf("ping over encrypted downlinks: %v %+v\n%s", err, c, out)
	}
}
