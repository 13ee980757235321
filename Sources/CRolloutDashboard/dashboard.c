// The dashboard's HTML, CSS and JavaScript (assets/, plain files: no build step) compiled into
// the binary with C23's #embed, as CRolloutScripts does with the Lua scripts: a copied `rollout`
// binary still serves its page, with nothing to find next to it, and editing a file rebuilds this.
#include "CRolloutDashboard.h"

#if !defined(__has_embed)
#error "CRolloutDashboard needs #embed: clang 19 or later (Swift 6.1 and later toolchains)"
#endif

#pragma clang diagnostic ignored "-Wc23-extensions"

static const unsigned char page[] = {
#embed "assets/dashboard.html"
};
CRolloutDashboard_Asset CRolloutDashboard_page(void) { return (CRolloutDashboard_Asset){page, sizeof page}; }

static const unsigned char script[] = {
#embed "assets/dashboard.js"
};
CRolloutDashboard_Asset CRolloutDashboard_script(void) { return (CRolloutDashboard_Asset){script, sizeof script}; }

static const unsigned char style[] = {
#embed "assets/dashboard.css"
};
CRolloutDashboard_Asset CRolloutDashboard_style(void) { return (CRolloutDashboard_Asset){style, sizeof style}; }

static const unsigned char signIn[] = {
#embed "assets/sign-in.html"
};
CRolloutDashboard_Asset CRolloutDashboard_signIn(void) { return (CRolloutDashboard_Asset){signIn, sizeof signIn}; }
