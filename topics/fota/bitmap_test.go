package fota

import (
	"encoding/hex"
	"slices"
	"testing"
)

func TestBitmap(t *testing.T) {
	b, err := NewBitmap(20)
	if err != nil {
		t.Fatal(err)
	}
	if b.Count() != 0 || b.Complete() || b.Len() != 20 {
		t.Fatal("new bitmap not empty")
	}
	for _, i := range []int{0, 1, 2, 3, 4, 5, 6, 7, 9, 19} {
		if err := b.Set(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Set(3); err != nil { // setting twice is fine
		t.Fatal(err)
	}
	for _, bad := range []int{-1, 20} {
		if err := b.Set(bad); err == nil {
			t.Errorf("Set(%d) accepted", bad)
		}
		if b.Has(bad) {
			t.Errorf("Has(%d)", bad)
		}
	}
	if !b.Has(9) || b.Has(8) || b.Count() != 10 {
		t.Fatalf("Has/Count wrong: count %d", b.Count())
	}
	if got := b.Missing(4); !slices.Equal(got, []int{8, 10, 11, 12}) {
		t.Fatalf("Missing(4) = %v", got)
	}
	if got := b.Missing(100); len(got) != 10 || got[9] != 18 {
		t.Fatalf("Missing(100) = %v", got)
	}
	enc, _ := b.MarshalBinary()
	if got := hex.EncodeToString(enc); got != "00000014"+"ff"+"02"+"08" {
		t.Fatalf("encoded %s", got)
	}
	var back Bitmap
	if err := back.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	if back.Len() != 20 || back.Count() != 10 || !back.Has(19) {
		t.Fatal("round trip lost bits")
	}
	back.Reset()
	if back.Count() != 0 || back.Len() != 20 {
		t.Fatal("Reset")
	}
	for i := range 20 {
		_ = b.Set(i)
	}
	if !b.Complete() || b.Missing(8) != nil {
		t.Fatal("full bitmap not complete")
	}
}

func TestBitmapMissingSkipsFullBytes(t *testing.T) {
	b, _ := NewBitmap(MaxChunks)
	for i := range MaxChunks - 3 {
		_ = b.Set(i)
	}
	if got := b.Missing(8); !slices.Equal(got, []int{MaxChunks - 3, MaxChunks - 2, MaxChunks - 1}) {
		t.Fatalf("Missing = %v", got)
	}
	// A full byte that starts mid-scan must not be skipped over wrongly.
	c, _ := NewBitmap(24)
	for i := 1; i < 16; i++ {
		_ = c.Set(i)
	}
	if got := c.Missing(3); !slices.Equal(got, []int{0, 16, 17}) {
		t.Fatalf("Missing = %v", got)
	}
}

func TestBitmapErrors(t *testing.T) {
	if _, err := NewBitmap(MaxChunks + 1); err == nil {
		t.Error("NewBitmap accepted too many chunks")
	}
	if _, err := NewBitmap(-1); err == nil {
		t.Error("NewBitmap accepted -1")
	}
	for _, tc := range []struct{ name, hex string }{
		{"empty", ""},
		{"short header", "000000"},
		{"too many chunks", "00000c01" + "00"},
		{"too few bytes", "00000010" + "ff"},
		{"too many bytes", "00000008" + "ff00"},
		{"bits beyond n", "00000003" + "08"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, _ := hex.DecodeString(tc.hex)
			var b Bitmap
			wantErr(t, b.UnmarshalBinary(in), ErrMalformed, "")
		})
	}
}
