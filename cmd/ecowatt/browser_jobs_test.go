package main

import (
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestDashboardJobs: the fleet page starts a job from its filter (the
// form comes prefilled with the selector), the job page shows progress,
// per-state counts and the devices of a state with their reasons (a
// disabled device skipped "disabled"), pause, resume and cancel work, the
// Jobs list shows the job's bar and counts; a viewer sees no controls.
func TestDashboardJobs(t *testing.T) {
	b := newBrowser(t)
	s := startServer(t, "--job-tick", "100ms", "--operator", "vic:vic-pw-1:viewer")
	if out, err := s.cli(t, "device", "add", "--count", "4", "--prefix", "jb", "--label", "site=galle", "--keys-out", t.TempDir()+"/keys.json"); err != nil {
		t.Fatalf("device add: %v\n%s", err, out)
	}
	if out, err := s.cli(t, "device", "add", "--count", "2", "--prefix", "jx", "--label", "site=colombo", "--keys-out", t.TempDir()+"/keys2.json"); err != nil {
		t.Fatalf("device add: %v\n%s", err, out)
	}
	if out, err := s.cli(t, "device", "disable", "jb-0004", "--reason", "stolen"); err != nil {
		t.Fatalf("disable: %v\n%s", err, out)
	}
	var vt struct {
		Token string `json:"token"`
	}
	if st := s.api(t, "POST", "/api/v1/operators/vic/tokens", map[string]string{"label": "browser"}, &vt); st != 201 || vt.Token == "" {
		t.Fatalf("viewer token: %d", st)
	}

	b.run(t, "sign in",
		chromedp.Navigate(s.HTTP+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		setValue("#token", s.Token),
		chromedp.Click(chromedp.CSS("#signin")))
	rows := `document.querySelectorAll("#fleet-table tr[data-device]").length`
	b.waitJS(t, 30*time.Second, "the fleet", rows+` === 6`, rows)
	b.run(t, "filter", setValue("#fleet-q", "site=galle"))
	b.waitJS(t, 10*time.Second, "galle only", rows+` === 4`, rows)
	b.run(t, "start a job from the filter", chromedp.Click(chromedp.CSS("#fleet-start-job")))
	b.waitJS(t, 10*time.Second, "the form prefilled with the selector",
		`document.querySelector("#job-selector")?.value === "site=galle"`, `document.querySelector("#job-selector")?.value`)
	b.waitJS(t, 5*time.Second, "an admin may rotate keys", `!!document.querySelector('#job-kind option[value="rotate_key"]')`, "")
	b.run(t, "submit", setValue("#job-arg", "sampling_interval=10"), setValue("#job-rate", "600"),
		chromedp.Click(chromedp.CSS("#job-submit")))
	count := func(st string) string {
		return `document.querySelector('#job-counts li[data-state="` + st + `"]')?.textContent.trim()`
	}
	b.waitJS(t, 15*time.Second, "the job page: 3 queued (offline), the disabled one skipped",
		`location.hash.startsWith("#/jobs/") && `+count("queued")+` === "queued 3" && `+count("skipped")+` === "skipped 1"`,
		`location.hash + " " + document.querySelector("#job-counts")?.textContent`)
	b.waitJS(t, 5*time.Second, "no failed device yet", `document.querySelector("#job-dev-info").textContent === "0 failed"`,
		`document.querySelector("#job-dev-info").textContent`)
	b.run(t, "skipped devices", setValue("#job-dev-state", "skipped"))
	b.waitJS(t, 10*time.Second, "the skipped device with its reason",
		`document.querySelector('#job-device-table tr[data-device="jb-0004"] .reason')?.textContent === "disabled"`,
		`document.querySelector("#job-device-table").textContent`)
	b.shot(t, "job")

	b.run(t, "pause", chromedp.Click(chromedp.CSS("#job-pause")))
	b.waitJS(t, 10*time.Second, "paused", `document.querySelector("#job-progress").closest("main").querySelector("h1").textContent.includes("paused") && !document.querySelector("#job-resume").disabled`,
		`document.querySelector("h1").textContent`)
	b.run(t, "resume", chromedp.Click(chromedp.CSS("#job-resume")))
	b.waitJS(t, 10*time.Second, "running", `document.querySelector("h1").textContent.includes("running")`, `document.querySelector("h1").textContent`)
	b.run(t, "cancel", chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`), chromedp.Click(chromedp.CSS("#job-cancel")))
	b.waitJS(t, 10*time.Second, "cancelled, the queued devices not run",
		`document.querySelector("h1").textContent.includes("cancelled") && `+count("not_run")+` === "not run 3" && document.querySelector("#job-cancel").disabled`,
		`document.querySelector("h1").textContent + " " + document.querySelector("#job-counts")?.textContent`)
	jid, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](`decodeURIComponent(location.hash.split("/")[2])`))
	if err != nil {
		t.Fatal(err)
	}

	b.run(t, "jobs list", chromedp.Click(chromedp.CSS(`a[data-nav="jobs"]`)))
	row := `document.querySelector('#jobs-table tr[data-job="` + jid + `"]')`
	b.waitJS(t, 10*time.Second, "the job in the list with its bar and counts",
		row+`?.dataset.state === "cancelled" && `+row+`.querySelector('[role="progressbar"]').getAttribute("aria-valuenow") === "100" && `+
			row+`.querySelector('li[data-state="not_run"]').textContent.includes("3") && `+row+`.querySelector('li[data-state="skipped"]').textContent.includes("1")`,
		`document.querySelector("#jobs-table")?.textContent`)
	b.waitJS(t, 5*time.Second, "an admin can start jobs", `!!document.querySelector("#job-new")`, "")
	b.shot(t, "jobs")

	b.run(t, "sign in as a viewer",
		chromedp.Click(chromedp.CSS("#signout")),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		setValue("#token", vt.Token),
		chromedp.Click(chromedp.CSS("#signin")))
	b.waitJS(t, 30*time.Second, "signed in", `!document.querySelector("#signout").hidden`, "")
	b.run(t, "the job as a viewer", chromedp.Evaluate[chromedp.Void](`location.hash = "#/jobs/`+jid+`"`))
	b.waitJS(t, 10*time.Second, "counts and no controls",
		count("not_run")+` === "not run 3" && !document.querySelector("#job-pause, #job-resume, #job-cancel")`,
		`document.querySelector("main").innerHTML.slice(0, 400)`)
	b.run(t, "the list as a viewer", chromedp.Evaluate[chromedp.Void](`location.hash = "#/jobs"`))
	b.waitJS(t, 10*time.Second, "the list without New job", row+` && !document.querySelector("#job-new")`, "")
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.exceptions) > 0 {
		t.Errorf("page exceptions: %v", b.exceptions)
	}
}

// TestDashboardJobFailedDevices: a firmware job whose image fails its
// self-test on the simulated devices shows, on its page, the failed
// devices (the state the page opens on) with the devices' reasons.
func TestDashboardJobFailedDevices(t *testing.T) {
	b := newBrowser(t)
	s := startServer(t, append(fotaArgs, "--job-tick", "100ms")...)
	keys := s.provision(t, "jbf", 2)
	ff := newFOTAFleet(t, s)
	startFleet(t, s, keys, "", ff.setup)
	buildAndUpload(t, s, "1.0.5", "32KiB", true)
	waitOnline(t, s, 2)
	jid := startJob(t, s, "--selector", "id~jbf-", "--firmware", "1.0.5", "--max-per-minute", "600")

	b.run(t, "sign in on the job",
		chromedp.Navigate(s.HTTP+"/#/jobs/"+jid),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		setValue("#token", s.Token),
		chromedp.Click(chromedp.CSS("#signin")))
	failed := `[...document.querySelectorAll('#job-device-table tr[data-state="failed"]')]`
	b.waitJS(t, 2*time.Minute, "both devices failed with the rollback reason",
		failed+`.length === 2 && `+failed+`.every(tr => tr.querySelector(".reason").textContent.includes("rolled_back")) && `+
			`document.querySelector('#job-counts li[data-state="failed"]')?.textContent.trim() === "failed 2" && `+
			`document.querySelector("h1").textContent.includes("completed")`,
		`document.querySelector("h1")?.textContent + " " + document.querySelector("#job-counts")?.textContent + " " + document.querySelector("#job-device-table")?.textContent`)
	b.shot(t, "job-failed")
}
