// SPDX-License-Identifier: MIT
#pragma once
// The chat-template engine's insides (text/jinja/jinja.h is its interface), shared by its stages:
//   values.cpp    values, their conversions, and the sizes a render may build
//   lexer.cpp     source -> text segments and tokens (whitespace control)
//   parser.cpp    tokens -> statement and expression trees; the nesting limits
//   eval.cpp      trees -> output; the recursion and iteration limits
//   filters.cpp   filters, tests and the methods of strings
//   jinja.cpp     Template: the builtins and one render's budget
// A chat template comes with a downloaded model: it is untrusted code. Like Jinja's sandbox (which caps
// range() at 100 000 items) it runs under limits no real template comes near, each where its concern lives.
#include "text/jinja/jinja.h"

#include "base/error.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace together::jinja::detail {

using json = nlohmann::json;

[[noreturn]] void limitError(const std::string& msg);

// ---------------------------------------------------------------------------------------------------------
// Budget: what one render has used, for the limits that span it. Template::render sets t_budget for its
// thread; it is null outside a render (parsing builds strings too).

constexpr size_t kMaxStringBytes = 8u << 20;           // any one string, the output included
constexpr int64_t kMaxBuiltBytes = int64_t{512} << 20; // string bytes one render may build in all
constexpr size_t kMaxItems = 1000000;                  // items of one list
constexpr int64_t kMaxVisits = 50000000;               // items the walks over values visit in one render

struct Callable;
struct RenderBudget {
    int evalDepth = 0, callDepth = 0;
    int64_t iterations = 0, builtBytes = 0, visits = 0;
    // Every function made during the render (macros, bound methods, builtins). A function can hold what holds
    // it — a macro stored where its own scope reaches it (ns.f = m), a list's method appended to the list
    // (l.append(l.append)) — a reference cycle; the render empties them all when it ends, so nothing outlives it.
    std::vector<std::weak_ptr<Callable>> callables;
};
extern thread_local RenderBudget* t_budget;

void chargeBytes(size_t n);
// Items visited by the walks over values (printing, comparing, tojson, the checks of append and set): a value
// shared many times over (x = [x, x], forty times) is small in memory but 2^40 items to walk.
void chargeVisits(int64_t n);
void checkStringSize(size_t n);
void checkItems(size_t n);
// Loop iterations, macro calls and unique's comparisons, against the render's budget (eval.cpp).
void chargeIterations(int64_t n);

// One level of evaluation on the stack (RAII); `call` marks a macro call (limits in eval.cpp).
class DepthGuard {
public:
    explicit DepthGuard(bool call = false);
    ~DepthGuard();
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

private:
    bool m_call;
};

// Integer arithmetic as Python's would give it, or an error where Python's result would not fit in 64 bits
// (signed overflow is undefined behaviour in C++, and a wrapped number a silent wrong answer).
void checkOverflow(bool overflow, int line);
// A float made an integer (range() bounds, the int filter): NaN, infinities and values beyond 64 bits are errors.
int64_t floatToInt(double d, int line);

// ---------------------------------------------------------------------------------------------------------
// Values: the JSON types plus Undefined, callables (macros, builtins, bound methods) and namespaces; strings
// carry an "untrusted" mark per byte.

struct Value;
using Array = std::vector<Value>;
struct Object;
struct Callable;

struct Str {
    std::string s;
    std::vector<bool> mark; // empty: no byte untrusted; else one flag per byte
    Str() = default;
    Str(std::string text, std::vector<bool> marks)
        : s(std::move(text))
        , mark(std::move(marks))
    {
    }
    // A copy counts as text built: values are read by value, and reading an 8 MiB string in a loop copied it
    // every time (terabytes, within every other limit).
    Str(const Str& o)
        : s(o.s)
        , mark(o.mark)
    {
        chargeBytes(o.s.size());
    }
    Str(Str&&) noexcept = default;
    Str& operator=(const Str& o)
    {
        if (this != &o) {
            chargeBytes(o.s.size());
            s = o.s;
            mark = o.mark;
        }
        return *this;
    }
    Str& operator=(Str&&) noexcept = default;
    bool anyMarked() const { return std::find(mark.begin(), mark.end(), true) != mark.end(); }
    void append(const Str& o)
    {
        checkStringSize(s.size() + o.s.size());
        chargeBytes(o.s.size());
        if (!mark.empty() || !o.mark.empty()) {
            mark.resize(s.size(), false);
            if (o.mark.empty())
                mark.resize(s.size() + o.s.size(), false);
            else
                mark.insert(mark.end(), o.mark.begin(), o.mark.end());
        }
        s += o.s;
    }
    Str sub(size_t pos, size_t len = std::string::npos) const
    {
        Str r;
        r.s = s.substr(pos, len);
        if (!mark.empty())
            r.mark.assign(mark.begin() + static_cast<long>(pos), mark.begin() + static_cast<long>(pos + r.s.size()));
        return r;
    }
    // A derived string (upper, replace, tojson...) is untrusted as a whole if any input byte was.
    static Str derived(std::string text, bool untrusted)
    {
        checkStringSize(text.size());
        chargeBytes(text.size());
        Str r;
        r.s = std::move(text);
        if (untrusted)
            r.mark.assign(r.s.size(), true);
        return r;
    }
};

struct Undefined {};
struct None {};

struct Value {
    std::variant<Undefined, None, bool, int64_t, double, Str, std::shared_ptr<Array>, std::shared_ptr<Object>,
                 std::shared_ptr<Callable>>
        v;
    Value()
        : v(Undefined{})
    {
    }
    template <class T>
    Value(T x)
        : v(std::move(x))
    {
    }
    Value(const char* s)
        : v(Str{s, {}})
    {
    }
    Value(std::string s)
        : v(Str{std::move(s), {}})
    {
    }
    Value(int x)
        : v(static_cast<int64_t>(x))
    {
    }
    Value(size_t x)
        : v(static_cast<int64_t>(x))
    {
    }
    // Releasing the last reference to a list or mapping frees what it holds one level at a time, not by
    // recursion: a template can nest a list a million deep (a loop of `set ns.a = [ns.a]`), and freeing that
    // recursively would overflow the stack.
    ~Value();
    Value(const Value&) = default;
    Value(Value&&) noexcept = default;
    Value& operator=(const Value&) = default;
    Value& operator=(Value&&) noexcept = default;

    bool isUndefined() const { return std::holds_alternative<Undefined>(v); }
    bool isNone() const { return std::holds_alternative<None>(v); }
    bool isBool() const { return std::holds_alternative<bool>(v); }
    bool isInt() const { return std::holds_alternative<int64_t>(v); }
    bool isFloat() const { return std::holds_alternative<double>(v); }
    bool isNumber() const { return isInt() || isFloat(); }
    bool isString() const { return std::holds_alternative<Str>(v); }
    bool isArray() const { return std::holds_alternative<std::shared_ptr<Array>>(v); }
    bool isObject() const { return std::holds_alternative<std::shared_ptr<Object>>(v); }
    bool isCallable() const { return std::holds_alternative<std::shared_ptr<Callable>>(v); }
    const Str& str() const { return std::get<Str>(v); }
    Array& arr() const { return *std::get<std::shared_ptr<Array>>(v); }
    Object& obj() const { return *std::get<std::shared_ptr<Object>>(v); }
    Callable& fn() const { return *std::get<std::shared_ptr<Callable>>(v); }
    double num() const { return isInt() ? static_cast<double>(std::get<int64_t>(v)) : std::get<double>(v); }
    int64_t integer() const { return std::get<int64_t>(v); }
};

struct Object {
    std::vector<std::pair<std::string, Value>> items; // insertion order, as Python dicts keep it
    bool isNamespace = false;
    Value* find(const std::string& k)
    {
        for (auto& [key, val] : items)
            if (key == k)
                return &val;
        return nullptr;
    }
    void set(const std::string& k, Value v)
    {
        if (auto* p = find(k))
            *p = std::move(v);
        else
            items.emplace_back(k, std::move(v));
    }
};

struct Args {
    std::vector<Value> positional;
    std::vector<std::pair<std::string, Value>> keyword;
    const Value* kw(const std::string& name) const
    {
        for (auto& [k, v] : keyword)
            if (k == name)
                return &v;
        return nullptr;
    }
    // positional i, else keyword `name`, else nullptr
    const Value* get(size_t i, const std::string& name) const
    {
        if (i < positional.size())
            return &positional[i];
        return kw(name);
    }
};

struct Callable {
    std::function<Value(const Args&)> call;
};

Value makeArray(Array a = {});
Value makeObject();
Value makeFn(std::function<Value(const Args&)> f);
// Whether `container` is, or holds at any depth, the list or mapping at `target`. A value that held itself
// would make printing it recurse without end (and leak: the values are reference-counted), so the two ways a
// template mutates a value (list.append, ns.attr = …) refuse it.
bool reaches(const Value& container, const void* target);
bool truthy(const Value& v);
bool isMarked(const Value& v);
std::string formatFloat(double d);
std::string pyRepr(const Value& v, bool quoteStrings);
Str toStr(const Value& v);
json toJson(const Value& v);
// json.dumps as transformers' tojson calls it.
void dumpPython(const json& j, std::string& out, int indent, int depth);
Value fromJson(const json& j, bool mark);
bool equals(const Value& a, const Value& b);
// Occurrences of `needle` in strings, found in time linear in the text and the needle (glibc's memmem):
// std::string::find compares at every position, n·m byte comparisons on 8 MiB strings. An empty needle is found
// at `from`. `in`, find, count, replace and split search through this. The needle is not copied: it must outlive
// the Finder.
class Finder {
public:
    explicit Finder(std::string_view needle);
    Finder(const Finder&) = delete;
    Finder& operator=(const Finder&) = delete;
    size_t find(std::string_view text, size_t from = 0) const; // std::string::npos when absent
    size_t size() const { return m_needle.size(); }

private:
    std::string_view m_needle;
};

// ---------------------------------------------------------------------------------------------------------
// Lexer

enum class Tok {
    Name,
    String,
    Int,
    Float,
    Op,
    End,
};

struct Token {
    Tok type;
    std::string text;
    int line;
};

struct Segment {
    enum Kind {
        Text,
        Expr,
        Stmt,
    } kind;
    std::string text;          // Text
    std::vector<Token> tokens; // Expr / Stmt
    int line;
};

[[noreturn]] void syntaxError(int line, const std::string& msg);
// Splits the source into text and tags, applying whitespace control and HF's environment settings.
std::vector<Segment> lex(const std::string& src);

// ---------------------------------------------------------------------------------------------------------
// Syntax trees

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
    enum Kind {
        Literal,
        Var,
        ListLit,
        DictLit,
        Attr,
        Index,
        Slice,
        Call,
        Filter,
        Test,
        Unary,
        Binary,
        Ternary,
    } kind;
    int line = 0;
    Value literal;
    std::string name;            // Var, Attr, Filter, Test, Unary/Binary operator
    std::vector<ExprPtr> kids;   // operands / list items / dict keys+values alternating / slice parts (may be null)
    std::vector<ExprPtr> args;   // call/filter/test positional args
    std::vector<std::pair<std::string, ExprPtr>> kwargs;
    bool negate = false;         // Test: "is not"
    int depth = 1;               // of the tree below, this node included (bounded by kMaxExprDepth)
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
    enum Kind {
        Text,
        Output,
        If,
        For,
        Set,
        SetBlock,
        Macro,
        Break,
        Continue,
        CallBlock,
    } kind;
    int line = 0;
    std::string text;
    ExprPtr expr;                          // Output value, If condition (per branch below), For iterable, Set value
    std::vector<std::pair<ExprPtr, Body>> branches; // If: (cond|null for else, body)
    std::vector<std::string> targets;      // For loop vars / Set names
    std::string attrTarget;                // Set ns.attr
    ExprPtr filterCond;                    // For ... if cond
    Body body, elseBody;
    std::vector<std::pair<std::string, ExprPtr>> params; // Macro params with defaults
};

// The statement tree of a lexed template (parser.cpp).
Body parse(std::vector<Segment> segs);

// ---------------------------------------------------------------------------------------------------------
// Evaluator

struct BreakSignal {};
struct ContinueSignal {};

class Scope {
public:
    explicit Scope(Scope* parent = nullptr)
        : m_parent(parent)
    {
    }
    Value lookup(const std::string& name) const
    {
        for (const Scope* s = this; s; s = s->m_parent)
            if (auto it = s->m_vars.find(name); it != s->m_vars.end())
                return it->second;
        return Value();
    }
    void set(const std::string& name, Value v) { m_vars[name] = std::move(v); }
    // Everything visible from here, as a parentless scope that owns it: what a macro keeps, because the
    // scope it was defined in (a loop body, say) may be gone when a namespace hands the macro out later.
    std::shared_ptr<Scope> snapshot() const
    {
        auto out = std::make_shared<Scope>();
        std::vector<const Scope*> chain;
        for (const Scope* s = this; s; s = s->m_parent)
            chain.push_back(s);
        for (auto it = chain.rbegin(); it != chain.rend(); ++it)
            for (auto& [k, v] : (*it)->m_vars)
                out->m_vars[k] = v;
        return out;
    }

private:
    Scope* m_parent;
    std::map<std::string, Value> m_vars;
};

[[noreturn]] void runtimeError(int line, const std::string& msg);

class Evaluator {
public:
    explicit Evaluator(Str& out)
        : m_out(out)
    {
    }

    void exec(const Body& body, Scope& scope)
    {
        for (auto& n : body)
            execNode(*n, scope);
    }

    Value eval(const Expr& e, Scope& scope);

private:
    void execNode(const Node& n, Scope& scope);
    // One function per kind of statement and expression (eval.cpp). execNode and eval only dispatch: they hold the
    // DepthGuard (one level per node), and their frames, on the stack once per level of nesting, stay small.
    void execOutput(const Node& n, Scope& scope);
    void execIf(const Node& n, Scope& scope);
    void execFor(const Node& n, Scope& scope);
    Array loopItems(const Node& n, Scope& scope);
    void execSet(const Node& n, Scope& scope);
    void execSetBlock(const Node& n, Scope& scope);
    void execMacro(const Node& n, Scope& scope);
    Value evalList(const Expr& e, Scope& scope);
    Value evalDict(const Expr& e, Scope& scope);
    Value evalAttr(const Expr& e, Scope& scope);
    Value evalIndex(const Expr& e, Scope& scope);
    Value evalSlice(const Expr& e, Scope& scope);
    Value evalCall(const Expr& e, Scope& scope);
    Value evalUnary(const Expr& e, Scope& scope);
    Value evalTernary(const Expr& e, Scope& scope);
    Value evalBinary(const Expr& e, Scope& scope);
    Value callFilter(const Expr& e, Scope& scope);
    // The filters on lists (filters.cpp): members, as they read attributes and map runs other filters.
    std::optional<Value> listFilter(const std::string& f, const Value& v, const Args& a, int line, Scope& scope);
    Value sortItems(const Value& v, const Args& a, int line);
    Value selectItems(const std::string& f, const Value& v, const Args& a, int line);
    Value mapItems(const Value& v, const Args& a, int line, Scope& scope);
    Value runTest(const Expr& e, Scope& scope);
    Value getAttr(const Value& obj, const std::string& name, int line);
    Value getIndex(const Value& obj, const Value& key, int line);
    Args evalArgs(const Expr& e, Scope& scope)
    {
        Args a;
        for (auto& x : e.args)
            a.positional.push_back(eval(*x, scope));
        for (auto& [k, x] : e.kwargs)
            a.keyword.emplace_back(k, eval(*x, scope));
        return a;
    }

    Str& m_out;
};

Array iterate(const Value& v, int line);
// A string's method (split, strip, startswith...) bound to it (filters.cpp).
Value stringMethod(const Value& self, const std::string& name, int line);

} // namespace together::jinja::detail
