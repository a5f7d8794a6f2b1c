package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// mutatingJS lists the enabled controls on the page that would change
// something: every form but the fleet filters and the telemetry plot's,
// and every enabled button or button-styled link but the few that only
// read (paging, sorting, a manifest, more rows). Empty when there are none.
const mutatingJS = `(() => {
  const readOnly = "#fleet-prev, #fleet-next, button.sort, .plot-controls button, #fw-table button[aria-expanded], #job-dev-more";
  const found = [];
  for (const f of document.querySelectorAll("main form")) {
    if (!f.matches("form.filters, form.plot-controls")) found.push("form#" + f.id);
  }
  for (const el of document.querySelectorAll("main button, main input[type=submit], main a.button")) {
    if (el.disabled || el.matches(readOnly)) continue;
    found.push(el.tagName.toLowerCase() + "#" + el.id + " " + JSON.stringify(el.textContent.trim()));
  }
  return found.join(", ");
})()`

// adminControls and operatorControls are the pages' controls by the role
// they need (routeAccess in backend/httpapi).
const (
	adminControls    = "#fw-upload, #dev-disable, #dev-enable, #dev-decommission"
	operatorControls = "#config-form, #command-form, #fota-start, #rollback, #fleet-start-job, #ro-create, #ro-pause, #ro-resume, #ro-abort, #job-new, #job-form, #job-pause, #job-resume, #job-cancel"
)

// TestDashboardRoles signs in to the dashboard with a name and password
// as each role: a wrong password is refused at the form with no session;
// a viewer finds no enabled mutating control on the device, fleet,
// firmware, rollout and job pages (a note says which role it needs); an
// operator changes a config through the device page and the timeline
// entry says "by opa", starts a job from the fleet filter whose page says
// it created it, and sees no admin control; the admin token sees those.
func TestDashboardRoles(t *testing.T) {
	b := newBrowser(t)
	s := startServer(t, append(fotaArgs, "--job-tick", "100ms", "--operator", "vic:vic-pw-1:viewer,opa:opa-pw-1:operator")...)
	keys := s.provision(t, "rol", 1)
	startFleet(t, s, keys, "", dashboardFleet(firmwareKey(t, s)))
	dev := "rol-0001"
	// An offline device keeps a rollout and a job running, so that their
	// pages have live controls to hide.
	s.provision(t, "idle", 1)
	buildAndUpload(t, s, "1.0.7", "32KiB", false)
	var ro map[string]any
	if st := s.api(t, "POST", "/api/v1/rollouts", map[string]any{"version": "1.0.7", "devices": []string{"idle-0001"},
		"canary": 0, "batch_size": 1, "max_failure_percent": 100}, &ro); st != 201 && st != 200 {
		t.Fatalf("create rollout: %d %v", st, ro)
	}
	if r, ok := ro["rollout"].(map[string]any); ok {
		ro = r
	}
	rid, _ := ro["id"].(string)
	if rid == "" {
		t.Fatalf("rollout without an id: %v", ro)
	}
	jid := startJob(t, s, "--devices", "idle-0001", "--command", "ping", "--max-per-minute", "60")
	waitOnline(t, s, 1)

	text := func(sel string) string { return `document.querySelector(` + fmt.Sprintf("%q", sel) + `)?.textContent` }
	signInAs := func(t *testing.T, name, password string) {
		t.Helper()
		b.run(t, "sign in as "+name,
			chromedp.WaitVisible(chromedp.CSS("#op-name")),
			setValue("#op-name", name), setValue("#op-password", password),
			chromedp.Click(chromedp.CSS("#signin")))
		b.waitJS(t, 15*time.Second, "signed in as "+name, `!document.querySelector("#signout").hidden && `+text("#whoami")+`?.startsWith(`+fmt.Sprintf("%q", name+" (")+`)`,
			text("#token-error")+` + " | " + `+text("#whoami"))
	}
	signOut := func(t *testing.T) {
		t.Helper()
		b.run(t, "sign out", chromedp.Click(chromedp.CSS("#signout")), chromedp.WaitVisible(chromedp.CSS("#op-name")))
	}
	// open goes to hash and waits for ready, an expression true once the
	// page has loaded what it shows (so that an absent control is absent,
	// not yet to come).
	open := func(t *testing.T, hash, ready string) {
		t.Helper()
		b.run(t, "open "+hash, chromedp.Evaluate[chromedp.Void](`location.hash = `+fmt.Sprintf("%q", hash)))
		b.waitJS(t, 20*time.Second, hash+" loaded", `location.hash === `+fmt.Sprintf("%q", hash)+` && (`+ready+`)`,
			`document.querySelector("main")?.innerText.slice(0, 300)`)
	}
	noMutating := func(t *testing.T, page string, note bool) {
		t.Helper()
		cond := mutatingJS + ` === "" && !document.querySelector(` + fmt.Sprintf("%q", adminControls+", "+operatorControls) + `)`
		if note {
			cond += ` && document.querySelector('[data-role-note="operator"]')`
		}
		b.waitJS(t, 5*time.Second, page+": no enabled mutating control", cond, mutatingJS)
	}
	// note: the page says which role its hidden controls need.
	pages := []struct {
		hash, ready string
		note        bool
	}{
		{"#/", `document.querySelector('#fleet-table tr[data-device="rol-0001"]')`, false},
		{"#/device/" + dev, `document.querySelector("#timeline li") && document.querySelector("#lifecycle-state") && document.querySelector("#command-history")`, true},
		{"#/firmware", `document.querySelector('#fw-table tr[data-version="1.0.7"]')`, true},
		{"#/rollouts/" + rid, `document.querySelector("#ro-overall")`, true},
		{"#/jobs", `document.querySelector('#jobs-table tr[data-job="` + jid + `"]')`, false},
		{"#/jobs/" + jid, `document.querySelector('#job-counts') && document.querySelector("#job-progress")`, false},
		{"#/jobs/new/site%3Dx", `document.querySelector("h1")?.textContent === "New job"`, true},
	}

	b.run(t, "the sign-in page", chromedp.Navigate(s.HTTP+"/"), chromedp.WaitVisible(chromedp.CSS("#op-name")))

	if !t.Run("wrong password", func(t *testing.T) {
		b.run(t, "sign in with a wrong password",
			setValue("#op-name", "vic"), setValue("#op-password", "not-vic-pw"),
			chromedp.Click(chromedp.CSS("#signin")))
		b.waitJS(t, 10*time.Second, "the refusal at the form",
			text("#token-error")+`?.includes("Wrong operator name or password") && document.querySelector("#op-password").getAttribute("aria-invalid") === "true" && document.querySelector("#signout").hidden`,
			text("#token-error"))
		// No session: none in the tab, and no cookie the server takes.
		b.run(t, "ask the server", chromedp.Evaluate[chromedp.Void](`window.__who = 0; fetch("/api/v1/whoami").then((r) => { window.__who = r.status; })`))
		b.waitJS(t, 10*time.Second, "whoami refused, nothing kept in the tab",
			`window.__who === 401 && sessionStorage.length === 0 && document.querySelector("#op-name")`, `window.__who`)
	}) {
		return
	}

	if !t.Run("viewer", func(t *testing.T) {
		signInAs(t, "vic", "vic-pw-1")
		for _, p := range pages {
			open(t, p.hash, p.ready)
			noMutating(t, p.hash, p.note)
		}
		b.waitJS(t, 5*time.Second, "the new-job page says why", text("main")+`.includes("Starting a job needs the role operator; you are a viewer.")`, text("main"))
		b.shot(t, "viewer-job-new")
		open(t, "#/device/"+dev, pages[1].ready)
		b.shot(t, "viewer-device")
		signOut(t)
	}) {
		return
	}

	if !t.Run("operator", func(t *testing.T) {
		signInAs(t, "opa", "opa-pw-1")
		open(t, "#/device/"+dev, pages[1].ready+` && document.querySelector("#config-form")`)
		b.waitJS(t, 5*time.Second, "operator controls, no admin ones",
			`document.querySelector("#command-form") && document.querySelector("#fota-start") && !document.querySelector(`+fmt.Sprintf("%q", adminControls)+`) && document.querySelector('[data-role-note="admin"]')`,
			mutatingJS)
		b.run(t, "change the config",
			setValue("#cfg-sampling_interval", "3"),
			setValue("#cfg-upload_interval", "6"),
			chromedp.Click(chromedp.CSS("#config-save")))
		b.waitJS(t, 30*time.Second, "the config change in the timeline, by opa",
			`[...document.querySelectorAll('#timeline li[data-kind="config"]')].some((li) => li.querySelector(".by b")?.textContent === "opa")`,
			text("#timeline")+` + " | " + `+text("#config-error"))
		b.waitJS(t, 30*time.Second, "the device's ack",
			`(() => { const a = document.querySelector("#config-ack"); return a.dataset.desired > 0 && a.dataset.version === a.dataset.desired; })()`,
			text("#config-status"))
		b.shot(t, "operator-device")

		open(t, "#/firmware", pages[2].ready)
		b.waitJS(t, 5*time.Second, "a rollout form, no upload", `document.querySelector("#ro-create") && !document.querySelector("#fw-upload") && document.querySelector('[data-role-note="admin"]')`, mutatingJS)
		open(t, "#/rollouts/"+rid, pages[3].ready)
		b.waitJS(t, 5*time.Second, "rollout controls", `document.querySelector("#ro-pause") && document.querySelector("#ro-abort")`, mutatingJS)

		open(t, "#/", pages[0].ready)
		b.run(t, "filter", setValue("#fleet-q", "id=rol-0001"))
		b.waitJS(t, 10*time.Second, "one row", `document.querySelectorAll("#fleet-table tr[data-device]").length === 1`, "")
		b.run(t, "start a job from the filter", chromedp.Click(chromedp.CSS("#fleet-start-job")))
		b.waitJS(t, 10*time.Second, "the job form prefilled", `document.querySelector("#job-selector")?.value === "id=rol-0001"`, `document.querySelector("#job-selector")?.value`)
		b.waitJS(t, 5*time.Second, "no key rotation for an operator", `!document.querySelector('#job-kind option[value="rotate_key"]')`, "")
		b.run(t, "submit", setValue("#job-arg", "sampling_interval=4"), chromedp.Click(chromedp.CSS("#job-submit")))
		b.waitJS(t, 15*time.Second, "the job page says opa created it",
			`location.hash.startsWith("#/jobs/") && `+text("#job-progress")+`?.includes("created by opa") && document.querySelector("#job-cancel")`,
			text("#job-error")+` + " | " + `+text("#job-progress"))
		signOut(t)
	}) {
		return
	}

	t.Run("admin", func(t *testing.T) {
		b.run(t, "sign in with the admin token", setValue("#token", s.Token), chromedp.Click(chromedp.CSS("#signin")))
		b.waitJS(t, 15*time.Second, "signed in", `!document.querySelector("#signout").hidden`, text("#token-error"))
		open(t, "#/device/"+dev, pages[1].ready)
		b.waitJS(t, 5*time.Second, "lifecycle and operator controls", `document.querySelector("#dev-disable") && document.querySelector("#dev-decommission") && document.querySelector("#config-form") && !document.querySelector("[data-role-note]")`, mutatingJS)
		open(t, "#/firmware", pages[2].ready)
		b.waitJS(t, 5*time.Second, "upload and rollout forms", `document.querySelector("#fw-upload") && document.querySelector("#ro-create") && !document.querySelector("[data-role-note]")`, mutatingJS)
	})
}
