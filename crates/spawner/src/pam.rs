//! A narrow safe layer over libpam, for the spawn helper's optional PAM step (SPEC §5,
//! step 2): check the account (`pam_acct_mgmt`), establish credentials
//! (`pam_setcred`), open a session (`pam_open_session`) and read the environment the
//! modules set (`pam_getenvlist`), for an account the helper has already mapped and
//! vetted. There is no authentication: the user proved who they are to Globus Auth, and
//! a user endpoint has nobody to answer a password prompt.
//!
//! libpam is loaded at run time (`dlopen("libpam.so.0")`), not linked: building Gantry
//! needs no PAM headers, and a site without PAM fails only when `pam.enable` is set,
//! with an error that says what to install. The library is never unloaded (the modules
//! it loads may have registered cleanups that point into it).
//!
//! The session is opened by the helper, which then execs the user endpoint; nobody
//! calls `pam_close_session` or `pam_end` afterwards, as with the official endpoint.
//! Modules' close steps (pam_systemd ending its logind session, say) therefore never
//! run; a stack that needs them does not suit a user endpoint.
//!
//! ```no_run
//! use gantry_spawner::pam::PamSession;
//! # fn main() -> Result<(), gantry_spawner::pam::PamError> {
//! let mut pam = PamSession::start("gantry-endpoint", "alice")?;
//! pam.acct_mgmt()?; // an expired or locked account stops here
//! pam.setcred()?;
//! pam.open_session()?;
//! for (name, value) in pam.env_list()? {
//!     println!("{name}={value}");
//! }
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The library loaded at run time: the soname every Linux-PAM install provides.
pub const LIBPAM: &str = "libpam.so.0";

/// The service name used when config.yaml sets none.
pub const DEFAULT_SERVICE: &str = "gantry-endpoint";

/// Where Linux-PAM looks for a service's file, in its order: the admin's directory, then
/// the distribution's (vendor) directories.
const SERVICE_DIRS: [&str; 3] = ["/etc/pam.d", "/usr/lib/pam.d", "/usr/share/pam.d"];

/// The most conversation messages kept, and the most characters of each: modules are
/// the admin's, but the messages go on to a status pipe and into a task's error.
const MAX_MESSAGES: usize = 32;
const MAX_MESSAGE_CHARS: usize = 1024;

// Linux-PAM's constants (`_pam_types.h`); they are part of its ABI.
const PAM_SUCCESS: c_int = 0;
const PAM_BUF_ERR: c_int = 5;
const PAM_CONV_ERR: c_int = 19;
const PAM_ESTABLISH_CRED: c_int = 0x2;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;
/// The most messages Linux-PAM passes in one conversation call.
const PAM_MAX_NUM_MSG: c_int = 32;

/// The name of a PAM return code, for the admin (`PAM_ACCT_EXPIRED`).
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 32] = [
        "PAM_SUCCESS",
        "PAM_OPEN_ERR",
        "PAM_SYMBOL_ERR",
        "PAM_SERVICE_ERR",
        "PAM_SYSTEM_ERR",
        "PAM_BUF_ERR",
        "PAM_PERM_DENIED",
        "PAM_AUTH_ERR",
        "PAM_CRED_INSUFFICIENT",
        "PAM_AUTHINFO_UNAVAIL",
        "PAM_USER_UNKNOWN",
        "PAM_MAXTRIES",
        "PAM_NEW_AUTHTOK_REQD",
        "PAM_ACCT_EXPIRED",
        "PAM_SESSION_ERR",
        "PAM_CRED_UNAVAIL",
        "PAM_CRED_EXPIRED",
        "PAM_CRED_ERR",
        "PAM_NO_MODULE_DATA",
        "PAM_CONV_ERR",
        "PAM_AUTHTOK_ERR",
        "PAM_AUTHTOK_RECOVERY_ERR",
        "PAM_AUTHTOK_LOCK_BUSY",
        "PAM_AUTHTOK_DISABLE_AGING",
        "PAM_TRY_AGAIN",
        "PAM_IGNORE",
        "PAM_ABORT",
        "PAM_AUTHTOK_EXPIRED",
        "PAM_MODULE_UNKNOWN",
        "PAM_BAD_ITEM",
        "PAM_CONV_AGAIN",
        "PAM_INCOMPLETE",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("an unknown PAM code")
}

/// PAM's settings for one spawn, from config.yaml's `pam:` mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PamSettings {
    /// The PAM service: its stacks are `/etc/pam.d/<service_name>`.
    pub service_name: String,
}

/// A message a PAM module sent through the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "text")]
pub enum PamMessage {
    /// `PAM_TEXT_INFO`: information for the user.
    Info(String),
    /// `PAM_ERROR_MSG`: an error for the user ("Your account has expired; ...").
    Error(String),
    /// A prompt the helper refused to answer (a user endpoint has nobody to ask).
    Prompt(String),
}

impl fmt::Display for PamMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PamMessage::Info(text) | PamMessage::Error(text) => f.write_str(text),
            PamMessage::Prompt(text) => write!(f, "unanswered prompt {text:?}"),
        }
    }
}

/// What went wrong with PAM, in words an admin can act on.
#[derive(Debug, thiserror::Error)]
pub enum PamError {
    /// libpam (or one of its functions) could not be loaded.
    #[error(
        "PAM is enabled (pam.enable in config.yaml) but {library} could not be loaded: {reason}; \
         install the PAM library (Debian/Ubuntu: libpam0g, RHEL: pam) or set pam.enable: false"
    )]
    Library {
        /// The library's name.
        library: String,
        /// What `dlopen` or `dlsym` said.
        reason: String,
    },
    /// The service name is unusable.
    #[error(
        "the PAM service name {service:?} is not valid ({reason}); set pam.service_name in \
         config.yaml to the name of a file in /etc/pam.d"
    )]
    BadServiceName {
        /// The name as configured.
        service: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No file configures the service, so PAM would silently use its `other` service.
    #[error(
        "the PAM service {service:?} is not configured: there is no /etc/pam.d/{service}; \
         create it (for example with the lines `account include common-account` and \
         `session include common-session`) or set pam.service_name in config.yaml to a \
         service that exists"
    )]
    NoService {
        /// The name as configured.
        service: String,
    },
    /// The account name cannot be passed to C.
    #[error("the account name {user:?} contains a NUL byte")]
    BadUser {
        /// The name.
        user: String,
    },
    /// A libpam call failed.
    #[error("{}", call_text(.function, .user, .service, *.code, .reason, .messages))]
    Call {
        /// The function (`pam_acct_mgmt`).
        function: &'static str,
        /// The account.
        user: String,
        /// The PAM service.
        service: String,
        /// PAM's return code.
        code: i32,
        /// `pam_strerror`'s text for it.
        reason: String,
        /// What the modules said through the conversation during the call.
        messages: Vec<PamMessage>,
    },
}

fn call_text(
    function: &str,
    user: &str,
    service: &str,
    code: i32,
    reason: &str,
    messages: &[PamMessage],
) -> String {
    let mut text = if function == "pam_acct_mgmt" {
        format!("PAM refused the account {user}: {reason}")
    } else {
        format!("PAM's {function} failed for {user}: {reason}")
    };
    text.push_str(&format!(" ({}, PAM service {service})", code_name(code)));
    if !messages.is_empty() {
        let said: Vec<String> = messages.iter().map(ToString::to_string).collect();
        text.push_str(&format!("; PAM said: {}", said.join(" / ")));
    }
    text
}

/// Checks, before any user asks, that PAM can run for `service`: the name is usable, a
/// file configures it, and libpam loads. The MEP calls this at start so that a
/// misconfigured site fails at once rather than on every task.
pub fn preflight(service: &str) -> Result<PathBuf, PamError> {
    let path = service_file(service)?;
    libpam()?;
    Ok(path)
}

/// The file that configures `service`, checked as Linux-PAM would find it. Without one,
/// Linux-PAM falls back to its `other` service (permissive on some distributions,
/// refusing on others), which is never what an admin who named a service meant.
pub fn service_file(service: &str) -> Result<PathBuf, PamError> {
    let bad = |reason| PamError::BadServiceName {
        service: service.to_owned(),
        reason,
    };
    if service.is_empty() {
        return Err(bad("it is empty"));
    }
    if service.contains(['/', '\0']) || service == "." || service == ".." {
        return Err(bad("it must be a plain file name"));
    }
    if service.chars().any(char::is_whitespace) {
        return Err(bad("it contains white space"));
    }
    for dir in SERVICE_DIRS {
        let path = Path::new(dir).join(service);
        if path.is_file() {
            return Ok(path);
        }
    }
    // Without /etc/pam.d, Linux-PAM reads the single file /etc/pam.conf, whose lines
    // start with the service name.
    let conf = Path::new("/etc/pam.conf");
    if !Path::new("/etc/pam.d").is_dir()
        && let Ok(text) = std::fs::read_to_string(conf)
        && text
            .lines()
            .any(|line| line.split_whitespace().next() == Some(service))
    {
        return Ok(conf.to_path_buf());
    }
    Err(PamError::NoService {
        service: service.to_owned(),
    })
}

/// libpam's handle type; only ever used behind a pointer.
#[repr(C)]
struct PamHandle {
    _opaque: [u8; 0],
}

/// `struct pam_message`.
#[repr(C)]
struct RawMessage {
    msg_style: c_int,
    msg: *const c_char,
}

/// `struct pam_response`.
#[repr(C)]
struct RawResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn = unsafe extern "C" fn(
    c_int,
    *mut *const RawMessage,
    *mut *mut RawResponse,
    *mut c_void,
) -> c_int;

/// `struct pam_conv`.
#[repr(C)]
struct RawConv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

type StartFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const RawConv,
    *mut *mut PamHandle,
) -> c_int;
type HandleIntFn = unsafe extern "C" fn(*mut PamHandle, c_int) -> c_int;
type StrerrorFn = unsafe extern "C" fn(*mut PamHandle, c_int) -> *const c_char;
type GetenvlistFn = unsafe extern "C" fn(*mut PamHandle) -> *mut *mut c_char;

/// The libpam functions Gantry calls, resolved once.
struct Libpam {
    start: StartFn,
    end: HandleIntFn,
    acct_mgmt: HandleIntFn,
    setcred: HandleIntFn,
    open_session: HandleIntFn,
    strerror: StrerrorFn,
    getenvlist: GetenvlistFn,
}

/// The last `dl*` error, as text.
fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by the loader, valid
    // until the next dl* call on this thread; it is copied at once.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return "unknown error".to_owned();
    }
    // SAFETY: non-NULL, NUL-terminated, as above.
    unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned()
}

impl Libpam {
    /// Loads `library` and resolves every function; the error is the loader's reason.
    fn open(library: &str) -> Result<Libpam, String> {
        let name = CString::new(library).map_err(|_| "NUL in the name".to_owned())?;
        // SAFETY: dlopen with a valid C string; loading libpam runs only its own
        // initialisers. The handle is never closed (see the module comment).
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dl_error());
        }
        let symbol = |symbol: &str| -> Result<*mut c_void, String> {
            let c_symbol = CString::new(symbol).map_err(|_| "NUL in a symbol".to_owned())?;
            // SAFETY: a valid handle from dlopen and a valid C string.
            let address = unsafe { libc::dlsym(handle, c_symbol.as_ptr()) };
            if address.is_null() {
                return Err(format!("{symbol} is missing: {}", dl_error()));
            }
            Ok(address)
        };
        // SAFETY (each transmute below): the address is the named libpam function, whose
        // C prototype (Linux-PAM's `security/pam_appl.h`) the Rust type matches exactly;
        // a function pointer and a data pointer have the same size on every target
        // Linux-PAM supports.
        unsafe {
            Ok(Libpam {
                start: std::mem::transmute::<*mut c_void, StartFn>(symbol("pam_start")?),
                end: std::mem::transmute::<*mut c_void, HandleIntFn>(symbol("pam_end")?),
                acct_mgmt: std::mem::transmute::<*mut c_void, HandleIntFn>(symbol(
                    "pam_acct_mgmt",
                )?),
                setcred: std::mem::transmute::<*mut c_void, HandleIntFn>(symbol("pam_setcred")?),
                open_session: std::mem::transmute::<*mut c_void, HandleIntFn>(symbol(
                    "pam_open_session",
                )?),
                strerror: std::mem::transmute::<*mut c_void, StrerrorFn>(symbol("pam_strerror")?),
                getenvlist: std::mem::transmute::<*mut c_void, GetenvlistFn>(symbol(
                    "pam_getenvlist",
                )?),
            })
        }
    }
}

fn library_error(library: &str, reason: &str) -> PamError {
    PamError::Library {
        library: library.to_owned(),
        reason: reason.to_owned(),
    }
}

/// libpam, loaded on first use and kept for the life of the process.
fn libpam() -> Result<&'static Libpam, PamError> {
    static LIBRARY: OnceLock<Result<Libpam, String>> = OnceLock::new();
    LIBRARY
        .get_or_init(|| Libpam::open(LIBPAM))
        .as_ref()
        .map_err(|reason| library_error(LIBPAM, reason))
}

/// What the conversation function collects while a libpam call runs. It lives in a box
/// whose address libpam keeps as `appdata_ptr`; it is only ever reached through that
/// raw pointer, never through a `&mut`, so the callback and the session never alias.
struct Conversation {
    messages: RefCell<Vec<PamMessage>>,
}

impl Conversation {
    fn record(&self, message: PamMessage) {
        if let Ok(mut messages) = self.messages.try_borrow_mut()
            && messages.len() < MAX_MESSAGES
        {
            messages.push(message);
        }
    }
}

/// The conversation function: answers no prompt (`PAM_CONV_ERR`), and records
/// `PAM_TEXT_INFO` and `PAM_ERROR_MSG` for the status pipe and for errors.
///
/// # Safety
/// Called by libpam with Linux-PAM's conventions: `msg` points to `num_msg` pointers to
/// messages, `resp` to where a `calloc`ed reply array goes (libpam frees it), and
/// `appdata` is the `Conversation` given to `pam_start`.
unsafe extern "C" fn converse(
    num_msg: c_int,
    msg: *mut *const RawMessage,
    resp: *mut *mut RawResponse,
    appdata: *mut c_void,
) -> c_int {
    if num_msg <= 0 || num_msg > PAM_MAX_NUM_MSG || msg.is_null() || resp.is_null() {
        return PAM_CONV_ERR;
    }
    if appdata.is_null() {
        return PAM_CONV_ERR;
    }
    // SAFETY: appdata is the boxed Conversation the session keeps alive for as long as
    // the handle exists; only shared references to it are ever made.
    let conversation = unsafe { &*(appdata as *const Conversation) };
    let mut prompted = false;
    for i in 0..num_msg as usize {
        // SAFETY: `msg` holds `num_msg` message pointers (Linux-PAM's layout).
        let message = unsafe { *msg.add(i) };
        if message.is_null() {
            return PAM_CONV_ERR;
        }
        // SAFETY: a non-NULL pointer libpam gave us, to a pam_message.
        let message = unsafe { &*message };
        let text = if message.msg.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated string owned by the module for this call.
            let text = unsafe { CStr::from_ptr(message.msg) }.to_string_lossy();
            text.chars().take(MAX_MESSAGE_CHARS).collect()
        };
        match message.msg_style {
            PAM_TEXT_INFO => conversation.record(PamMessage::Info(text)),
            PAM_ERROR_MSG => conversation.record(PamMessage::Error(text)),
            _ => {
                conversation.record(PamMessage::Prompt(text));
                prompted = true;
            }
        }
    }
    if prompted {
        return PAM_CONV_ERR;
    }
    // Linux-PAM expects a reply array even for messages that need no answer; it frees
    // the array (and any `resp` strings in it, all NULL here) with free().
    // SAFETY: calloc of num_msg zeroed replies; NULL on failure is checked.
    let replies = unsafe { libc::calloc(num_msg as usize, std::mem::size_of::<RawResponse>()) };
    if replies.is_null() {
        return PAM_BUF_ERR;
    }
    // SAFETY: `resp` is non-NULL and points to where libpam reads the reply array.
    unsafe { *resp = replies.cast::<RawResponse>() };
    PAM_SUCCESS
}

/// One PAM transaction for one account.
pub struct PamSession {
    library: &'static Libpam,
    handle: *mut PamHandle,
    /// From `Box::into_raw`; freed after `pam_end` in `Drop`.
    conversation: *mut Conversation,
    last_status: c_int,
    service: String,
    user: String,
}

impl fmt::Debug for PamSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PamSession")
            .field("service", &self.service)
            .field("user", &self.user)
            .field("last_status", &code_name(self.last_status))
            .finish_non_exhaustive()
    }
}

impl PamSession {
    /// Loads libpam and starts a transaction (`pam_start`) for `user` with `service`,
    /// after checking that a file configures the service.
    pub fn start(service: &str, user: &str) -> Result<PamSession, PamError> {
        service_file(service)?;
        PamSession::start_with(libpam()?, service, user)
    }

    fn start_with(
        library: &'static Libpam,
        service: &str,
        user: &str,
    ) -> Result<PamSession, PamError> {
        let c_service = CString::new(service).map_err(|_| PamError::BadServiceName {
            service: service.to_owned(),
            reason: "it contains a NUL byte",
        })?;
        let c_user = CString::new(user).map_err(|_| PamError::BadUser {
            user: user.to_owned(),
        })?;
        let conversation = Box::into_raw(Box::new(Conversation {
            messages: RefCell::new(Vec::new()),
        }));
        let conv = RawConv {
            conv: Some(converse),
            appdata_ptr: conversation.cast::<c_void>(),
        };
        let mut handle: *mut PamHandle = std::ptr::null_mut();
        // SAFETY: valid C strings; pam_start copies `conv` (the struct) and keeps only
        // `appdata_ptr`, which stays valid until Drop frees it after pam_end.
        let status =
            unsafe { (library.start)(c_service.as_ptr(), c_user.as_ptr(), &conv, &mut handle) };
        let mut session = PamSession {
            library,
            handle,
            conversation,
            last_status: status,
            service: service.to_owned(),
            user: user.to_owned(),
        };
        if status != PAM_SUCCESS || handle.is_null() {
            return Err(session.error("pam_start", status));
        }
        Ok(session)
    }

    /// The account check (`pam_acct_mgmt`): an expired, locked or otherwise refused
    /// account fails here with PAM's reason and the modules' messages.
    pub fn acct_mgmt(&mut self) -> Result<(), PamError> {
        self.call("pam_acct_mgmt", self.library.acct_mgmt, 0)
    }

    /// Establishes the account's credentials (`pam_setcred(PAM_ESTABLISH_CRED)`):
    /// groups from pam_group, Kerberos tickets, and the like. Call it after the
    /// supplementary groups are set, or `initgroups` would wipe what it added.
    pub fn setcred(&mut self) -> Result<(), PamError> {
        self.call("pam_setcred", self.library.setcred, PAM_ESTABLISH_CRED)
    }

    /// Opens the session (`pam_open_session`): limits, home directories, logs. It is
    /// never closed (see the module comment).
    pub fn open_session(&mut self) -> Result<(), PamError> {
        self.call("pam_open_session", self.library.open_session, 0)
    }

    /// The environment the modules set (`pam_getenvlist`), as name and value pairs;
    /// entries that are not `NAME=value` are skipped.
    pub fn env_list(&mut self) -> Result<Vec<(String, String)>, PamError> {
        // SAFETY: a live handle; the result is NULL or a malloc'ed NULL-terminated array
        // of malloc'ed strings that the caller owns and frees.
        let list = unsafe { (self.library.getenvlist)(self.handle) };
        if list.is_null() {
            return Err(self.error("pam_getenvlist", PAM_BUF_ERR));
        }
        let mut pairs = Vec::new();
        let mut i = 0;
        loop {
            // SAFETY: the array ends with NULL; `i` never passes it.
            let entry = unsafe { *list.add(i) };
            if entry.is_null() {
                break;
            }
            // SAFETY: a NUL-terminated string from libpam.
            let text = unsafe { CStr::from_ptr(entry) }.to_string_lossy();
            if let Some((name, value)) = text.split_once('=')
                && !name.is_empty()
            {
                pairs.push((name.to_owned(), value.to_owned()));
            }
            // SAFETY: each entry was malloc'ed by libpam for us and is not used again.
            unsafe { libc::free(entry.cast::<c_void>()) };
            i += 1;
        }
        // SAFETY: the array itself, malloc'ed by libpam, no longer used.
        unsafe { libc::free(list.cast::<c_void>()) };
        Ok(pairs)
    }

    /// The messages the modules sent since the last call, oldest first.
    pub fn take_messages(&mut self) -> Vec<PamMessage> {
        // SAFETY: the Conversation lives until Drop; only shared references are made.
        let conversation = unsafe { &*self.conversation };
        conversation
            .messages
            .try_borrow_mut()
            .map(|mut messages| std::mem::take(&mut *messages))
            .unwrap_or_default()
    }

    /// The PAM service in use.
    pub fn service(&self) -> &str {
        &self.service
    }

    fn call(
        &mut self,
        function: &'static str,
        f: HandleIntFn,
        flags: c_int,
    ) -> Result<(), PamError> {
        // SAFETY: a live handle from pam_start; flags are Linux-PAM's.
        let status = unsafe { f(self.handle, flags) };
        self.last_status = status;
        if status == PAM_SUCCESS {
            return Ok(());
        }
        Err(self.error(function, status))
    }

    fn error(&mut self, function: &'static str, code: c_int) -> PamError {
        // SAFETY: pam_strerror accepts any code and returns a static (or handle-owned)
        // NUL-terminated string, copied at once; Linux-PAM allows a NULL handle.
        let text = unsafe { (self.library.strerror)(self.handle, code) };
        let reason = if text.is_null() {
            "no reason given".to_owned()
        } else {
            // SAFETY: non-NULL and NUL-terminated, as above.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        };
        PamError::Call {
            function,
            user: self.user.clone(),
            service: self.service.clone(),
            code,
            reason,
            messages: self.take_messages(),
        }
    }
}

impl Drop for PamSession {
    /// Reached only when the helper fails before its exec: ends the transaction and
    /// frees the conversation. On success the exec replaces the process and neither
    /// runs, which leaves the session open for the user endpoint's lifetime.
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: a live handle, ended once; afterwards libpam no longer uses the
            // conversation.
            unsafe { (self.library.end)(self.handle, self.last_status) };
            self.handle = std::ptr::null_mut();
        }
        // SAFETY: from Box::into_raw in start_with, freed once, after pam_end (or after
        // a failed pam_start, which keeps nothing).
        drop(unsafe { Box::from_raw(self.conversation) });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_says_what_to_install() {
        let library = "libpam-that-does-not-exist.so.0";
        let Err(reason) = Libpam::open(library) else {
            panic!("a missing library loaded");
        };
        let text = library_error(library, &reason).to_string();
        assert!(text.contains("PAM is enabled (pam.enable"), "{text}");
        assert!(
            text.contains("libpam-that-does-not-exist.so.0 could not be loaded"),
            "{text}"
        );
        assert!(text.contains("cannot open shared object file"), "{text}");
        assert!(text.contains("libpam0g"), "{text}");
        assert!(text.contains("pam.enable: false"), "{text}");
    }

    #[test]
    fn the_real_library_loads() {
        Libpam::open(LIBPAM).unwrap();
        libpam().unwrap();
    }

    #[test]
    fn a_missing_or_malformed_service_name_is_refused_with_the_fix() {
        for (name, reason) in [
            ("", "it is empty"),
            ("../etc/passwd", "plain file name"),
            ("..", "plain file name"),
            ("a b", "white space"),
        ] {
            let text = service_file(name).unwrap_err().to_string();
            assert!(text.contains(reason), "{name:?}: {text}");
            assert!(text.contains("pam.service_name"), "{name:?}: {text}");
        }
        let text = service_file("gantry-no-such-service-here")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("there is no /etc/pam.d/gantry-no-such-service-here"),
            "{text}"
        );
        assert!(text.contains("pam.service_name"), "{text}");
        // The same error from the session and from the MEP's check at start.
        let text = PamSession::start("gantry-no-such-service-here", "root")
            .unwrap_err()
            .to_string();
        assert!(text.contains("is not configured"), "{text}");
        assert!(preflight("").is_err());
    }

    #[test]
    fn an_existing_service_is_found() {
        // Every Linux-PAM install configures `other`, its fallback.
        assert_eq!(
            service_file("other").unwrap(),
            Path::new("/etc/pam.d/other")
        );
    }

    /// Calls the conversation function as libpam would.
    fn converse_with(messages: &[(c_int, &str)]) -> (c_int, Vec<PamMessage>, bool) {
        let texts: Vec<CString> = messages
            .iter()
            .map(|(_, t)| CString::new(*t).unwrap())
            .collect();
        let raw: Vec<RawMessage> = messages
            .iter()
            .zip(&texts)
            .map(|((style, _), text)| RawMessage {
                msg_style: *style,
                msg: text.as_ptr(),
            })
            .collect();
        let mut pointers: Vec<*const RawMessage> = raw.iter().map(|m| m as *const _).collect();
        let conversation = Conversation {
            messages: RefCell::new(Vec::new()),
        };
        let mut replies: *mut RawResponse = std::ptr::null_mut();
        // SAFETY: the layout libpam uses, with live buffers.
        let status = unsafe {
            converse(
                pointers.len() as c_int,
                pointers.as_mut_ptr(),
                &mut replies,
                (&conversation as *const Conversation).cast_mut().cast(),
            )
        };
        let replied = !replies.is_null();
        if replied {
            // SAFETY: calloc'ed by converse; freed here as libpam would.
            unsafe { libc::free(replies.cast()) };
        }
        (status, conversation.messages.into_inner(), replied)
    }

    #[test]
    fn the_conversation_records_messages_and_answers_no_prompt() {
        let (status, messages, replied) =
            converse_with(&[(PAM_TEXT_INFO, "hello"), (PAM_ERROR_MSG, "expired")]);
        assert_eq!(status, PAM_SUCCESS);
        assert!(replied, "libpam expects a reply array");
        assert_eq!(
            messages,
            [
                PamMessage::Info("hello".into()),
                PamMessage::Error("expired".into())
            ]
        );
        for style in [1, 2] {
            // PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON
            let (status, messages, replied) =
                converse_with(&[(PAM_TEXT_INFO, "about to ask"), (style, "Password: ")]);
            assert_eq!(status, PAM_CONV_ERR);
            assert!(!replied);
            assert_eq!(messages[1], PamMessage::Prompt("Password: ".into()));
        }
        let (status, _, _) = converse_with(&[]);
        assert_eq!(status, PAM_CONV_ERR);
    }

    #[test]
    fn code_names_follow_linux_pam() {
        assert_eq!(code_name(0), "PAM_SUCCESS");
        assert_eq!(code_name(7), "PAM_AUTH_ERR");
        assert_eq!(code_name(13), "PAM_ACCT_EXPIRED");
        assert_eq!(code_name(19), "PAM_CONV_ERR");
        assert_eq!(code_name(-1), "an unknown PAM code");
        assert_eq!(code_name(99), "an unknown PAM code");
    }

    #[test]
    fn a_refused_account_reads_as_a_refusal_with_pams_words() {
        let error = PamError::Call {
            function: "pam_acct_mgmt",
            user: "alice".into(),
            service: "gantry-endpoint".into(),
            code: 13,
            reason: "User account has expired".into(),
            messages: vec![PamMessage::Error("Your account has expired".into())],
        };
        assert_eq!(
            error.to_string(),
            "PAM refused the account alice: User account has expired (PAM_ACCT_EXPIRED, \
             PAM service gantry-endpoint); PAM said: Your account has expired"
        );
    }
}
