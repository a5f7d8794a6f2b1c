package main

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/devicesim/acquisition"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/fota"
)

// Browser tests drive Debian's chromium (headless, through chromedp)
// against a real server and a small simulated fleet. Screenshots go to a
// fresh temp dir (printed with t.Log) and, when ECOWATT_SCREENSHOTS=dir
// is set, to that dir too (make screenshots uses it for docs/img).

// EnvScreenshots names the directory that also receives the screenshots.
const EnvScreenshots = "ECOWATT_SCREENSHOTS"

// chromiumPath finds the browser: $ECOWATT_CHROMIUM, then chromium on PATH.
func chromiumPath() (string, error) {
	if p := os.Getenv("ECOWATT_CHROMIUM"); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("chromium not found (apt-get install chromium, or set ECOWATT_CHROMIUM)")
}

// browser is one headless chromium tab, with the page's uncaught
// exceptions collected.
type browser struct {
	ctx      context.Context
	shotsDir string

	mu         sync.Mutex // guards exceptions
	exceptions []string
}

// newBrowser starts chromium for t. When it cannot, the test fails under
// CI=true and is skipped otherwise.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	unavailable := func(err error) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("browser test needs chromium and CI=true: %v", err)
		}
		t.Skipf("skipping browser test: %v", err)
	}
	path, err := chromiumPath()
	if err != nil {
		unavailable(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	b := &browser{ctx: ctx}
	// The first Run starts the browser, which lives as long as ctx: it
	// must have no timeout of its own.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int]("1")); err != nil {
		cancelTab()
		cancelAlloc()
		unavailable(fmt.Errorf("start %s: %w", path, err))
	}
	console := chromedp.Console(ctx)
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		for m, err := range console {
			if err != nil {
				return
			}
			if m.IsException() {
				b.mu.Lock()
				b.exceptions = append(b.exceptions, m.Text)
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		<-consoleDone
	})
	b.shotsDir, err = os.MkdirTemp("", "ecowatt-screenshots-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots: %s", b.shotsDir)
	t.Cleanup(func() {
		b.mu.Lock()
		for _, e := range b.exceptions {
			t.Errorf("uncaught exception in the page: %s", e)
		}
		b.mu.Unlock()
		if t.Failed() {
			b.dump(t)
		}
	})
	return b
}

// setValue sets a form control's value as a user would, firing input
// and change.
func setValue(sel, value string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const el = document.querySelector(%q);
		el.value = %q;
		el.dispatchEvent(new Event("input", {bubbles: true}));
		el.dispatchEvent(new Event("change", {bubbles: true})); })()`, sel, value))
}

// dump logs the page's URL and text and saves failure.png, for a failed test.
func (b *browser) dump(t *testing.T) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
	if err != nil {
		t.Logf("page dump: %v", err)
		return
	}
	t.Logf("page at failure: %s", text)
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(90)); err == nil {
		os.WriteFile(filepath.Join(b.shotsDir, "failure.png"), png, 0o644)
	}
}

// run runs actions with a timeout.
func (b *browser) run(t *testing.T, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// waitJS polls a JavaScript expression until it is truthy. detail, when
// not empty, is an expression whose value goes into the failure message.
func (b *browser) waitJS(t *testing.T, timeout time.Duration, what, expr, detail string) {
	t.Helper()
	eventually(t, timeout, what, func() (bool, string) {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+expr+")"))
		if err != nil {
			return false, err.Error()
		}
		if ok || detail == "" {
			return ok, ""
		}
		msg, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("String("+detail+")"))
		return false, msg
	})
}

// shot saves a full-page screenshot as name.png.
func (b *browser) shot(t *testing.T, name string) {
	t.Helper()
	// Let the last render and bar transitions settle; no toast.
	b.run(t, "settle", chromedp.Sleep(600*time.Millisecond),
		chromedp.Evaluate[chromedp.Void](`document.querySelector("#toast").className = "toast"`),
		chromedp.Sleep(300*time.Millisecond))
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	dirs := []string{b.shotsDir}
	if d := os.Getenv(EnvScreenshots); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// dashboardFleet runs devices with telemetry, remote config, commands and
// FOTA (verifying with pub), sampling every second so that the plots fill
// quickly.
func dashboardFleet(pub ed25519.PublicKey) func(*devicesim.Device) error {
	return func(d *devicesim.Device) error {
		_, err := devicesim.AttachFeatures(d, devicesim.FeatureOptions{
			Telemetry: devicesim.TelemetryOptions{
				Config: acquisition.Config{
					SamplingInterval: time.Second,
					UploadInterval:   2 * time.Second,
					Registers:        []string{"voltage", "current", "pv1_voltage", "pv2_voltage", "output_power", "temperature"},
				},
				Modbus: modbus.ClientConfig{Timeout: 150 * time.Millisecond, Tries: 3, RetryDelay: 10 * time.Millisecond},
			},
			Config: devicesim.ConfigOptions{Default: topics.Config{SamplingInterval: 1, UploadInterval: 2,
				Registers: []string{"voltage", "current", "pv1_voltage", "pv2_voltage", "output_power", "temperature"}}},
			FOTA: devicesim.FOTAOptions{PublicKey: pub},
		})
		return err
	}
}

// firmwareKey reads the server's firmware-signing key; nil when the
// server has no FOTA routes.
func firmwareKey(t *testing.T, s *testServer) ed25519.PublicKey {
	t.Helper()
	var doc struct {
		PublicKey string `json:"public_key"`
	}
	if code := s.api(t, "GET", "/api/v1/firmware/key", nil, &doc); code != 200 {
		return nil
	}
	k, err := hex.DecodeString(doc.PublicKey)
	if err != nil || len(k) != ed25519.PublicKeySize {
		t.Fatalf("firmware key %q: %v", doc.PublicKey, err)
	}
	return k
}

// TestDashboard signs in to the dashboard of a real server with a small
// simulated fleet and walks through the pages: devices online, a config
// change acknowledged, a command succeeding, a rollout reaching 100%.
func TestDashboard(t *testing.T) {
	b := newBrowser(t)
	s := startServer(t)
	const n = 4
	keys := s.provision(t, "web", n)
	startFleet(t, s, keys, "", dashboardFleet(firmwareKey(t, s)))
	dev := "web-0001"

	b.run(t, "sign in",
		chromedp.Navigate(s.HTTP+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), "wrong-token"),
		chromedp.Click(chromedp.CSS("#signin")))
	b.waitJS(t, 10*time.Second, "the wrong token refused",
		`document.querySelector("#token-error")?.textContent.includes("not accepted")`, "")
	b.run(t, "sign in",
		setValue("#token", s.Token),
		chromedp.Click(chromedp.CSS("#signin")))

	if !t.Run("fleet online", func(t *testing.T) {
		b.waitJS(t, 60*time.Second, fmt.Sprintf("%d devices online in the fleet table", n),
			fmt.Sprintf(`document.querySelectorAll("#fleet-table tr[data-device] td.online .badge.ok").length === %d`, n),
			`document.querySelector("#fleet-summary")?.textContent`)
		b.waitJS(t, 30*time.Second, "live event stream", `document.querySelector("#live")?.textContent === "live"`, `document.querySelector("#live")?.textContent`)
		b.waitJS(t, 30*time.Second, "output power shown for every device",
			`[...document.querySelectorAll("#fleet-table tr[data-device] td.num")].every(td => td.textContent.endsWith(" W"))`,
			`[...document.querySelectorAll("#fleet-table td.num")].map(td => td.textContent).join(",")`)
		b.run(t, "filter", chromedp.SendKeys(chromedp.CSS("#fleet-q"), "id~web-0002"))
		b.waitJS(t, 5*time.Second, "filter to one row", `document.querySelectorAll("#fleet-table tr[data-device]").length === 1`, "")
		b.run(t, "clear filter", setValue("#fleet-q", ""))
		b.waitJS(t, 5*time.Second, "all rows back", fmt.Sprintf(`document.querySelectorAll("#fleet-table tr[data-device]").length === %d`, n), "")
		b.shot(t, "fleet")
	}) {
		return
	}

	if !t.Run("device config ack", func(t *testing.T) {
		b.run(t, "open device", chromedp.Click(chromedp.CSS(fmt.Sprintf(`a[data-id=%q]`, dev))),
			chromedp.WaitVisible(chromedp.CSS("#config-form")))
		b.waitJS(t, 60*time.Second, "telemetry plotted",
			`Number(document.querySelector("#telemetry-count")?.dataset.points) >= 24`,
			`document.querySelector("#telemetry-plot")?.textContent`)
		// A value the API refuses: the error shows at the field.
		b.run(t, "invalid config",
			setValue("#cfg-sampling_interval", "0"),
			chromedp.Click(chromedp.CSS("#config-save")))
		b.waitJS(t, 10*time.Second, "field error for sampling_interval",
			`document.querySelector("#cfg-sampling_interval-error").textContent.length > 0 &&
			 document.querySelector("#cfg-sampling_interval").getAttribute("aria-invalid") === "true"`,
			`document.querySelector("#config-error").textContent`)
		b.run(t, "valid config",
			setValue("#cfg-sampling_interval", "2"),
			setValue("#cfg-upload_interval", "4"),
			chromedp.Click(chromedp.CSS("#config-save")))
		b.waitJS(t, 30*time.Second, "the device's ack of the new version",
			`(() => { const a = document.querySelector("#config-ack");
			   return a.dataset.desired > 0 && a.dataset.version === a.dataset.desired &&
			     a.querySelector('li.accepted[data-param="sampling_interval"]') &&
			     a.querySelector('li.accepted[data-param="upload_interval"]'); })()`,
			`document.querySelector("#config-status").textContent + " | " + document.querySelector("#config-ack").textContent`)
		b.waitJS(t, 10*time.Second, "config event in the audit timeline",
			`document.querySelector('#timeline li[data-kind="config"]')`, "")
	}) {
		return
	}

	if !t.Run("command succeeds", func(t *testing.T) {
		b.run(t, "send a read_register command",
			setValue("#cmd-action", "read_register"),
			setValue("#cmd-register", "output_power"),
			chromedp.Click(chromedp.CSS("#cmd-send")))
		b.waitJS(t, 30*time.Second, "the command succeeded",
			`document.querySelector('#command-history tr[data-state="succeeded"]')`,
			`document.querySelector("#command-history").textContent + " | " + document.querySelector("#cmd-error").textContent`)
		b.shot(t, "device") // the whole page: plot, config ack, command, timeline
	}) {
		return
	}

	t.Run("rollout to 100%", func(t *testing.T) {
		if code := s.api(t, "GET", "/api/v1/firmware", nil, nil); code == 404 || code == 405 {
			t.Skip("FOTA routes not available yet: GET /api/v1/firmware answers 404")
		}
		testDashboardRollout(t, b, s, n)
	})
}

// testDashboardRollout uploads an image through the Firmware page, starts
// a rollout to the fleet and watches its progress bar reach 100%.
func testDashboardRollout(t *testing.T, b *browser, s *testServer, n int) {
	img := filepath.Join(t.TempDir(), "fw-1.1.0.bin")
	if err := writeTestImage(img, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	b.run(t, "upload firmware",
		chromedp.Navigate(s.HTTP+"/#/firmware"),
		chromedp.WaitVisible(chromedp.CSS("#fw-file")),
		setValue("#fw-version", "1.1.0"),
		chromedp.SetUploadFiles(chromedp.CSS("#fw-file"), []string{img}),
		chromedp.Click(chromedp.CSS("#fw-send")))
	b.waitJS(t, 30*time.Second, "firmware 1.1.0 listed", `document.querySelector('#fw-table tr[data-version="1.1.0"]')`,
		`document.querySelector("#fw-error").textContent`)
	b.shot(t, "firmware")
	b.run(t, "start rollout",
		setValue("#ro-version", "1.1.0"),
		setValue("#ro-batch", "2"),
		chromedp.Click(chromedp.CSS("#ro-start")))
	b.waitJS(t, 10*time.Second, "rollout page", `location.hash.startsWith("#/rollouts/") && document.querySelector("#ro-overall")`,
		`document.querySelector("#ro-error")?.textContent`)
	b.waitJS(t, 3*time.Minute, "rollout progress bar at 100%",
		`document.querySelector('#ro-overall [role="progressbar"]')?.getAttribute("aria-valuenow") === "100"`,
		`document.querySelector("#ro-progress")?.textContent`)
	b.waitJS(t, 30*time.Second, fmt.Sprintf("%d devices succeeded", n),
		fmt.Sprintf(`document.querySelectorAll('#ro-device-table tr[data-device] .badge.ok').length === %d`, n), "")
	b.shot(t, "rollout")
	// The fleet table after it: every device on 1.1.0 (replaces the first
	// fleet screenshot, which had no updates to show).
	b.run(t, "back to the fleet", chromedp.Click(chromedp.CSS(`a[data-nav="fleet"]`)))
	b.waitJS(t, 30*time.Second, "firmware 1.1.0 across the fleet table",
		fmt.Sprintf(`[...document.querySelectorAll("#fleet-table tr[data-device]")].filter(tr => tr.children[2].textContent === "1.1.0" && tr.querySelector("td.online .badge.ok")).length === %d`, n),
		`document.querySelector("#fleet-table tbody").innerText`)
	b.shot(t, "fleet")
}

// writeTestImage writes a valid firmware image of version to path.
func writeTestImage(path, version string) error {
	img, err := fota.BuildTestImage(version, 48<<10, false, 1)
	if err != nil {
		return fmt.Errorf("build test image %s: %w", version, err)
	}
	return os.WriteFile(path, img, 0o644)
}
