package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/fota"
	wire "github.com/ecowatt/ecowatt/topics/fota"
)

// parseSize reads a byte count: 1048576, 64KiB, 1MiB, 1M, 512k.
func parseSize(s string) (int, error) {
	mult := 1
	t := strings.ToLower(strings.TrimSpace(s))
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"kb", 1 << 10}, {"mb", 1 << 20}, {"k", 1 << 10}, {"m", 1 << 20}} {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, e.g. 1048576 or 1MiB", s)
	}
	return n * mult, nil
}

func fotaBuildImage(_ context.Context, e env, args []string) error {
	const synopsis = "fota build-image --version V --size N [--fail-boot] [--seed S] -o FILE"
	k := newOffline(e, "fota build-image", synopsis)
	fs := k.fs
	version := fs.String("version", "", "firmware version written into the app descriptor")
	size := fs.String("size", "1MiB", "image size in bytes (suffixes KiB and MiB allowed)")
	failBoot := fs.Bool("fail-boot", false, "mark the image so that a simulated device fails its self-test and rolls back")
	seed := fs.Int64("seed", 1, "seed of the filler bytes")
	out := fs.String("o", "", "output file")
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	if *version == "" || *out == "" {
		return k.usage("give --version and -o")
	}
	n, err := parseSize(*size)
	if err != nil {
		return k.usage(err.Error())
	}
	img, err := wire.BuildTestImage(*version, n, *failBoot, *seed)
	if err != nil {
		return fmt.Errorf("build-image: %w", err)
	}
	if err := os.WriteFile(*out, img, 0o644); err != nil {
		return fmt.Errorf("build-image: %w", err)
	}
	fmt.Fprintf(e.stdout, "wrote %s: ESP32 app image %s, %d bytes, fail-boot %t\n", *out, *version, n, *failBoot)
	return nil
}

func fotaSign(_ context.Context, e env, args []string) error {
	const synopsis = "fota sign --key KEY --version V [--chunk-size N] [-o MANIFEST] FILE"
	k := newOffline(e, "fota sign", synopsis)
	fs := k.fs
	keyPath := fs.String("key", "", "Ed25519 private key (PEM, from ecowatt keys gen)")
	version := fs.String("version", "", "firmware version; must match the image's app descriptor")
	chunk := fs.Int("chunk-size", wire.DefaultChunkSize, "chunk size in bytes (1024-32768)")
	out := fs.String("o", "", "manifest output file (default FILE.manifest.json)")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if *keyPath == "" || *version == "" {
		return k.usage("give --key and --version")
	}
	key, err := wire.LoadPrivateKey(*keyPath)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	img, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	m, err := wire.BuildManifest(img, *version, *chunk, key)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	if *out == "" {
		*out = pos[0] + ".manifest.json"
	}
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	fmt.Fprintf(e.stdout, "wrote %s: signed manifest of %s, %d chunks of %d bytes\n", *out, m.Version, len(m.Chunks), m.ChunkSize)
	return nil
}

func fotaPubkey(ctx context.Context, e env, args []string) error {
	k := newCall(e, "fota pubkey", "fota pubkey [--out FILE]", false)
	out := k.fs.String("out", "", "write the PEM to FILE instead of stdout")
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	raw, err := k.send(ctx, "GET", apiPath("firmware", "key"), nil)
	if err != nil {
		return err
	}
	key, err := decode[struct {
		PEM string `json:"pem"`
	}](k, raw)
	if err != nil {
		return err
	}
	if *out != "" {
		return os.WriteFile(*out, []byte(key.PEM), 0o644)
	}
	_, err = io.WriteString(e.stdout, key.PEM)
	return err
}

func printFirmware(w io.Writer, fws ...fota.Firmware) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSIZE\tCHUNKS\tCHUNK SIZE\tPROJECT\tSIGNED\tFAIL-BOOT\tSHA-256\tUPLOADED")
	for _, f := range fws {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%t\t%.16s…\t%s\n", f.Version, f.Size, f.Chunks, f.ChunkSize, f.Project,
			f.Signed, f.FailBoot, f.Hash, f.UploadedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func fotaUpload(ctx context.Context, e env, args []string) error {
	const synopsis = "fota upload --version V [--manifest M] [--chunk-size N] FILE [-o table|json]"
	k := newCall(e, "fota upload", synopsis, true)
	fs := k.fs
	version := fs.String("version", "", "firmware version; must match the image's app descriptor")
	manifest := fs.String("manifest", "", "a manifest signed offline (ecowatt fota sign); the server checks it against its key")
	chunk := fs.Int("chunk-size", 0, "chunk size in bytes (1024-32768); default the server's")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if *version == "" {
		return k.usage("give --version")
	}
	img, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("fota upload: %w", err)
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("version", *version)
	if *chunk != 0 {
		mw.WriteField("chunk_size", strconv.Itoa(*chunk))
	}
	if *manifest != "" {
		m, err := os.ReadFile(*manifest)
		if err != nil {
			return fmt.Errorf("fota upload: %w", err)
		}
		fw, _ := mw.CreateFormFile("manifest", "manifest.json")
		fw.Write(m)
	}
	fw, _ := mw.CreateFormFile("file", pos[0])
	fw.Write(img)
	if err := mw.Close(); err != nil {
		return fmt.Errorf("fota upload: %w", err)
	}
	var raw json.RawMessage
	if err := k.c.doRaw(ctx, "POST", apiPath("firmware"), mw.FormDataContentType(), &body, &raw); err != nil {
		return fmt.Errorf("fota upload: %w", err)
	}
	return render(k, raw, printOneFirmware)
}

func printOneFirmware(w io.Writer, f fota.Firmware) error { return printFirmware(w, f) }

func fotaList(ctx context.Context, e env, args []string) error {
	k := newCall(e, "fota list", "fota list [-o table|json]", true)
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	return show(ctx, k, "GET", apiPath("firmware"), nil, func(w io.Writer, l struct {
		Firmware []fota.Firmware `json:"firmware"`
	}) error {
		return printFirmware(w, l.Firmware...)
	})
}

func fotaShow(ctx context.Context, e env, args []string) error {
	k := newCall(e, "fota show", "fota show VERSION [-o table|json]", true)
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	return show(ctx, k, "GET", apiPath("firmware", pos[0]), nil, func(w io.Writer, f fota.Firmware) error {
		if err := printFirmware(w, f); err != nil || f.Manifest == nil {
			return err
		}
		fmt.Fprintln(w, "\nManifest:")
		return printJSON(w, f.Manifest)
	})
}

func printDeviceFOTA(w io.Writer, id string, f backend.DeviceFOTA) error {
	fmt.Fprintf(w, "%s  %s %s  %s %d/%d", id, f.State, f.Version, bar(f.Percent, 20), f.Received, f.Total)
	if f.Active {
		fmt.Fprintf(w, "  (updating to %s)", f.Target)
	} else if f.Result != "" {
		fmt.Fprintf(w, "  (last update to %s: %s)", f.Target, f.Result)
	}
	if f.Reason != "" {
		fmt.Fprintf(w, "  reason: %s %s", f.Reason, f.Detail)
	}
	_, err := fmt.Fprintln(w)
	return err
}

func fotaUpdate(ctx context.Context, e env, args []string) error {
	k := newCall(e, "fota update", "fota update ID --version V [-o table|json]", true)
	version := k.fs.String("version", "", "firmware version to install")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if *version == "" {
		return k.usage("give --version")
	}
	return showDeviceFOTA(ctx, k, "POST", pos[0], map[string]string{"version": *version})
}

func fotaDevice(ctx context.Context, e env, args []string) error {
	k := newCall(e, "fota device", "fota device ID [-o table|json]", true)
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	return showDeviceFOTA(ctx, k, "GET", pos[0], nil)
}

func showDeviceFOTA(ctx context.Context, k *call, method, id string, in any) error {
	return show(ctx, k, method, apiPath("devices", id, "fota"), in, func(w io.Writer, f backend.DeviceFOTA) error {
		return printDeviceFOTA(w, id, f)
	})
}

func fotaRollback(ctx context.Context, e env, args []string) error {
	const synopsis = "fota rollback ID [--reason R] [--version V]"
	k := newCall(e, "fota rollback", synopsis, false)
	reason := k.fs.String("reason", "", "why (echoed by the device as the detail of its status)")
	version := k.fs.String("version", "", "the version expected in the previous slot; the device refuses otherwise")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	body := map[string]string{"reason": *reason, "version": *version}
	if _, err := k.send(ctx, "POST", apiPath("devices", pos[0], "rollback"), body); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "rollback requested for %s; the device reports rolled_back (or failed: no_previous_slot): ecowatt fota device %s\n", pos[0], pos[0])
	return nil
}

// bar draws a text progress bar of width cells for pct (0-100).
func bar(pct float64, width int) string {
	n := int(pct / 100 * float64(width))
	n = max(0, min(width, n))
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]" + fmt.Sprintf(" %5.1f%%", pct)
}
