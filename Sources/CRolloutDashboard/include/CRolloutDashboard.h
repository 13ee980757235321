#ifndef CROLLOUT_DASHBOARD_H
#define CROLLOUT_DASHBOARD_H

#include <stddef.h>

/// One file of the dashboard (Sources/CRolloutDashboard/assets), as compiled into the binary:
/// its bytes (no NUL at the end) and their count.
typedef struct {
    const unsigned char *_Nonnull bytes;
    size_t count;
} CRolloutDashboard_Asset;

/// The page, with `{{...}}` placeholders the server fills in.
CRolloutDashboard_Asset CRolloutDashboard_page(void);
/// The page's script.
CRolloutDashboard_Asset CRolloutDashboard_script(void);
/// The page's style sheet.
CRolloutDashboard_Asset CRolloutDashboard_style(void);
/// The page shown when a request has no token, or a token without scope `read`.
CRolloutDashboard_Asset CRolloutDashboard_signIn(void);

#endif
